"""Generate a deterministic test tree (tests/support/tree.random_tree) and print its counts.

Usage: python bench/gen_tree.py DIR --files N --dirs M --seed S [--max-size B] [--no-weird] [--no-owners]
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tree builder lives with the tests (tests/support) rather than in an installed package.
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import tree  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse argv, build the tree under DIR (created if missing) and print the counts; returns the exit code."""
    parser = argparse.ArgumentParser(description="Generate a deterministic test tree.")
    parser.add_argument("dir", metavar="DIR", help="directory to fill (created if missing; should be empty)")
    parser.add_argument("--files", type=int, required=True, help="number of regular files")
    parser.add_argument("--dirs", type=int, required=True, help="number of directories")
    parser.add_argument("--seed", type=int, required=True, help="random seed; same seed, same tree")
    parser.add_argument("--max-size", type=int, default=16384, help="largest file size in bytes (default 16384)")
    parser.add_argument("--no-weird", action="store_true", help="leave out the names that are hard to handle")
    parser.add_argument("--no-owners", action="store_true", help="do not chown entries to uids/gids 1000-1005")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = tree.random_tree(
        os.fsencode(args.dir),
        seed=args.seed,
        n_files=args.files,
        n_dirs=args.dirs,
        weird_names=not args.no_weird,
        max_size=args.max_size,
        owners=not args.no_owners,
    )
    elapsed = time.perf_counter() - start
    print(" ".join(f"{key}={value}" for key, value in counts.items()) + f" seconds={elapsed:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
