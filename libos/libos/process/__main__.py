"""A child process's entry point: ``python -m libos.process DIR READ_FD WRITE_FD TARGET``.

libos.process.parent.spawn starts children with this command line;
libos.process.child does the work.
"""

import sys

if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(
            "usage: python -m libos.process DIR READ_FD WRITE_FD module:function", file=sys.stderr
        )
        sys.exit(2)
    from libos.process.child import child_main, exit_now

    exit_now(child_main(sys.argv[1:]))
