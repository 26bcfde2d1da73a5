"""``vqp serve``: the HTTP service (FastAPI on uvicorn); flags override ``VQP_*`` environment settings."""
from __future__ import annotations

from . import add_detector_args


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (image and detect endpoints, video jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g = p.add_argument_group("service (defaults from VQP_* environment variables, see vqp/service/settings.py)")
    g.add_argument("--max-batch", type=int, help="detector batch limit; 1 turns micro-batching off (default 8)")
    g.add_argument("--max-wait-ms", type=float, help="how long a batch waits for more requests (default 5)")
    g.add_argument("--queue-size", type=int, help="image requests waiting for decoding, and frames waiting for the "
                   "detector, before 503 (default 64)")
    g.add_argument("--jpeg-queue", type=int, help="JPEG encodes waiting for a worker before 503 (default 8)")
    g.add_argument("--max-image-bytes", type=int, help="image request body limit (default 32 MiB)")
    g.add_argument("--max-video-bytes", type=int, help="video upload limit (default 1 GiB)")
    g.add_argument("--max-pixels", type=int, help="decoded image pixel limit (default 50,000,000)")
    g.add_argument("--timeout", dest="timeout_s", type=float,
                   help="an image request expected to wait longer than this many seconds to start is refused at "
                        "once with 503 (default 60; a client sets its own deadline with ?timeout=, answered 504)")
    g.add_argument("--encode-workers", type=int, help="threads decoding and encoding images (default: CPU count)")
    g.add_argument("--jobs-dir", help="folder of the job database and files (default ./vqp-jobs)")
    g.add_argument("--max-jobs", type=int, help="queued plus running jobs before 503 (default 16)")
    g.add_argument("--job-workers", type=int, help="video jobs encoded at the same time (default 1)")
    add_detector_args(p)
    p.set_defaults(func=run, conf=None, imgsz=None)


def run(args) -> int:
    import uvicorn

    from ..detect import load_detector
    from ..service import Settings, create_app
    from ..service.jobs import JobStore

    keys = ("model", "device", "conf", "imgsz", "max_batch", "max_wait_ms", "queue_size", "jpeg_queue", "max_image_bytes",
            "max_video_bytes", "max_pixels", "timeout_s", "encode_workers", "jobs_dir", "max_jobs", "job_workers")
    settings = Settings.from_env(**{k: getattr(args, k) for k in keys})
    # load the model and open the job store here, so a bad --model or --jobs-dir is a one-line error
    detector = load_detector(settings.model, classes=args.classes, conf=settings.conf, imgsz=settings.imgsz,
                             device=settings.device, batch=settings.max_batch)  # --classes: for every request
    JobStore(settings.jobs_dir).db.close()
    uvicorn.run(create_app(settings, detector), host=args.host, port=args.port,
                log_level="info" if args.verbose else "warning")
    return 0
