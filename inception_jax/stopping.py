"""Stop signals as a flag: SIGTERM, SIGINT and SIGUSR2 become a request that
the training loop honours after a step (save, then stop), whenever they come:
while the process starts, loads data or compiles too. Installed by `train`'s
command line before JAX is imported, so no signal finds the default handler
(which killed the process mid-compile: a segmentation fault for Ctrl-C,
exit 143 without a word for SIGTERM).

Light on purpose: imports nothing heavy at module level.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopSignal:
  """Turns SIGTERM, SIGINT and SIGUSR2 into a flag (`received`, the signal's
  name) that the loop checks after each step. A second Ctrl-C while stopping
  says the save is being finished; a third aborts at once (KeyboardInterrupt:
  the save in progress is then not used, the previous checkpoint is)."""

  # SIGUSR2: what SLURM sends ahead of a job's time limit (submitit's
  # --signal=USR2@90), so a run saves before it is killed.
  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

  def __init__(self):
    self.received, self._previous, self._interrupts = None, {}, 0

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT:
      self._interrupts += 1
      if self._interrupts == 2:
        log.warning('stopping: finishing the step and its checkpoint first '
                    '(Ctrl-C once more aborts at once, without that checkpoint)')
      elif self._interrupts > 2:
        raise KeyboardInterrupt
    if self.received is None:
      self.received = signal.Signals(signum).name

  def any_process(self) -> bool:
    """Whether any process received a signal (all processes agree)."""
    import jax
    import numpy as np
    flag = self.received is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
    return flag
