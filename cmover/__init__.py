"""cmover: clone very large (Lustre) filesystems by spreading the copy over many workers.

Importing any cmover module has no side effects: no file, socket or library is opened and no log
handler is installed until an entry point asks for it.
"""

__version__ = "0.1.0"
