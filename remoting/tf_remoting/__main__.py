import sys

from tf_remoting.worker.cli import main

sys.exit(main(prog="python -m tf_remoting"))
