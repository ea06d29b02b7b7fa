"""adaptercar: a sidecar that puts a legacy application behind gRPC and JSON/HTTP."""

import os as _os

# Workers spawn legacy programs (process backends) with fork+exec after grpc is imported.
# grpc's fork handlers then abort the child (SIGABRT, "epoll_wait error: Bad file descriptor")
# before it can exec; the child execs at once and needs none of them. grpc reads this at import.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
