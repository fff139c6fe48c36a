import sys

from devtools.bench.runner import main

# Guarded: multiprocessing's spawn imports this module again (as __mp_main__) in its children.
if __name__ == "__main__":
    sys.exit(main())
