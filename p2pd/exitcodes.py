"""Exit codes shared by `p2pd` and `p2pctl`; documented in the README and never renumbered."""

OK = 0
FAILED = 1  # the request was understood but failed (unknown peer, peer not linked, ...)
USAGE = 2  # bad command line (click's own code for usage errors)
NOT_RUNNING = 3  # the daemon is not running (LSB status code)
TIMEOUT = 4  # the daemon or the peer did not answer in time
PERMISSION = 5  # the control socket or home is not ours to use
CONFLICT = 6  # p2pd start: already running on this home, or a port is in use
