"""Start a task's log pump: ``python -I -S run_pump.py ARGS -- EXECUTABLE ARGV...``.

See ``logpump``.

As ``wri_plugins/process/run_shim.py``: a script given by path is compiled on every start, an
imported module comes from its cached bytecode, so this file stays tiny. ``-I -S`` leaves only
this directory on ``sys.path``; the pump also needs ``crilog`` from the process runtime.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.join(os.path.dirname(_here), "process")]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from wri_plugins.systemd import logpump
else:
    import logpump  # a top-level module here, not wri_plugins.systemd.logpump

sys.exit(logpump.main(sys.argv[1:]))
