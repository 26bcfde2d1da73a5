"""``vqp serve``: the HTTP service (FastAPI on uvicorn); flags override ``VQP_*`` environment settings."""
from __future__ import annotations

import socket
import sys

from ..errors import VqpError
from . import add_detector_args

SETTINGS = ("model", "device", "conf", "imgsz", "max_batch", "max_wait_ms", "queue_size", "jpeg_queue",
            "max_image_bytes", "max_video_bytes", "max_pixels", "timeout_s", "encode_workers", "jobs_dir", "max_jobs",
            "job_workers", "job_ttl", "jobs_quota", "jobs", "ray_address")


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (image and detect endpoints, video jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    g = p.add_argument_group("service (each also read from VQP_<NAME>, e.g. VQP_MAX_BATCH; see "
                             "vqp/service/settings.py)")
    g.add_argument("--max-batch", type=int, help="detector batch limit; 1 turns micro-batching off (default 8)")
    g.add_argument("--max-wait-ms", type=float, help="how long a batch waits for more requests (default 5)")
    g.add_argument("--queue-size", type=int, help="image requests waiting for decoding, and frames waiting for the "
                   "detector, before 503 (default 64)")
    g.add_argument("--jpeg-queue", type=int, help="JPEG encodes waiting for a worker before 503 (default 8)")
    g.add_argument("--max-image-bytes", metavar="SIZE", help="image request body limit, e.g. 32MiB (default 32 MiB)")
    g.add_argument("--max-video-bytes", metavar="SIZE", help="video upload limit (default 1 GiB)")
    g.add_argument("--max-pixels", type=int, help="decoded image pixel limit (default 50,000,000)")
    g.add_argument("--timeout", dest="timeout_s", metavar="SECONDS",
                   help="an image request expected to wait longer than this many seconds to start is refused at "
                        "once with 503 (default 60; a client sets its own deadline with ?timeout=, answered 504)")
    g.add_argument("--encode-workers", type=int,
                   help="threads decoding, and threads encoding JPEG (default: CPU count)")
    g.add_argument("--jobs-dir", help="folder of the job database and files (default ./vqp-jobs)")
    g.add_argument("--max-jobs", type=int, help="queued plus running jobs before 503 (default 16)")
    g.add_argument("--job-workers", type=int, help="video jobs encoded at the same time (default 1)")
    g.add_argument("--job-ttl", metavar="TIME", help="how long a finished or failed job is kept, e.g. 3600, 90m, "
                   "24h or 7d (default 24h)")
    g.add_argument("--jobs-quota", metavar="SIZE", help="bytes the jobs folder may hold before uploads get 507, "
                   "e.g. 500M or 20GiB (default 20 GiB; 0: none)")
    g.add_argument("--jobs", choices=("local", "ray"), help="where video jobs are encoded: threads of this process "
                   "(local, the default) or actors on Ray (the jobs folder must then be shared by every Ray node)")
    g.add_argument("--ray-address", metavar="ADDRESS", help="with --jobs ray: the Ray to join, e.g. auto or "
                   "ray://HOST:10001 (default: $RAY_ADDRESS, else a new local Ray)")
    add_detector_args(p)
    p.set_defaults(func=run, conf=None, imgsz=None)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a bad address or a taken port is a one-line error."""
    if not 0 <= port <= 65535:
        raise VqpError(f"--port must be between 0 and 65535, got {port}")
    try:
        family, kind, proto = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][:3]
        sock = socket.socket(family, kind, proto)  # proto TCP: asyncio sets TCP_NODELAY on its connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise VqpError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    return sock


def run(args) -> int:
    import uvicorn

    from ..detect import load_detector
    from ..roi import ROI_CONF
    from ..service import Settings, create_app
    from ..service.app import refuse_fallback
    from ..service.jobs import JobStore

    settings = Settings.from_env(**{k: getattr(args, k) for k in SETTINGS})
    sock = listen(args.host, args.port)
    # open the job store and load the model here, so a bad --jobs-dir or --model is a one-line error
    JobStore(settings.jobs_dir).db.close()
    refuse_fallback(settings)
    if settings.jobs == "ray":  # a missing ray or an unreachable cluster is a one-line error before serving
        from ..distributed import connect

        connect(settings.ray_address)
    # boxes down to ROI_CONF steer the JPEG search; responses report those at settings.conf and above
    detector = load_detector(settings.model, classes=args.classes, conf=min(settings.conf, ROI_CONF), imgsz=settings.imgsz,
                             device=settings.device, batch=settings.max_batch)  # --classes: for every request
    host, port = sock.getsockname()[:2]
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    line = (f"vqp: serving on {where} (model {detector.source}, device {getattr(detector, 'device', 'cpu')}, "
            f"jobs in {settings.jobs_dir})")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:  # listening: the one start-up line, whatever the log level
                print(line, file=sys.stderr, flush=True)

    config = uvicorn.Config(create_app(settings, detector), log_level="info" if args.verbose else "warning")
    Server(config).run(sockets=[sock])
    return 0
