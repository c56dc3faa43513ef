"""The config schema: one dataclass per section. Adding a field here is all it takes to add a key.

The binder (binder.py) walks the type hints. A field's `metadata` carries what the type cannot say:
`min`/`max` for numbers (see `_range`) and `check`, the name of a per-field check in binder.py. The
comment after a field is its help text. Rules that span several keys are in rules.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from birdwatch.config import secrets as _secrets


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


# A path on this machine: `~` is expanded once, where the file is bound, so every part reads the same path.
PATH: dict[str, Any] = {"path": True}


@dataclass
class ReconnectConfig:
    initial_s: float = field(default=1.0, metadata=_range(0.05, 3600))
    max_s: float = field(default=60.0, metadata=_range(0.1, 86400))


@dataclass
class MotionConfig:
    """Background subtraction on a downscaled grey frame; regions are mapped back to full size."""

    width: int = field(default=320, metadata=_range(64, 1920))  # analysis width in pixels
    threshold: float = field(default=24.0, metadata=_range(1, 255))  # MOG2 variance threshold
    min_area: float = field(default=0.002, metadata=_range(0.0, 1.0))  # fraction of the frame
    max_regions: int = field(default=8, metadata=_range(1, 64))
    padding: float = field(default=0.2, metadata=_range(0.0, 2.0))  # grow each box by this fraction
    warmup_frames: int = field(default=10, metadata=_range(0, 10000))
    history: int = field(default=300, metadata=_range(10, 100000))


@dataclass
class CameraConfig:
    name: str = field(metadata={"check": "camera_name"})
    url: str | int = field(metadata={"check": "camera_url", **PATH})  # a file path is expanded; URLs are not
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # ffmpeg: OpenCV's FFmpeg (software decode). gstreamer: GStreamer's decodebin, which picks a hardware
    # decoder where one is installed (VA-API); jetson: the same, with nvvidconv out of the Jetson's NVMM
    # buffers, so decodebin's nvv4l2decoder decodes on the Jetson's hardware. Both need OpenCV built with
    # GStreamer (JetPack's python3-opencv is; the pip wheels are not).
    decoder: Literal["ffmpeg", "gstreamer", "jetson"] = "ffmpeg"
    loop: bool = False  # video files: start again at the end
    realtime: bool = True  # video files: read at the file's frame rate, as a camera would
    stall_timeout_s: float | None = field(default=None, metadata=_range(0.5, 3600))  # None: 10 frame intervals, >= 5 s
    open_timeout_s: float = field(default=10.0, metadata=_range(0.5, 600))
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


@dataclass
class ModelConfig:
    name: str = "hgnet_v2_b2_danube-delta"  # a birder pretrained name, fetched by `birdwatch models pull`
    file: str | None = field(default=None, metadata=PATH)  # a local birder .pt file; overrides `name`
    network: str | None = None  # birder network of `file` when its file name does not start with it
    models_dir: str = field(default="models", metadata=PATH)
    device: str = field(default="auto", metadata={"check": "device"})
    top_k: int = field(default=3, metadata=_range(1, 50))
    batch_size: int = field(default=8, metadata=_range(1, 512))  # crops per forward pass; 32-64 suit a GPU
    verify_sha256: bool = True  # check a pretrained file against birder's published hash
    download: Literal["auto", "never"] = "auto"  # auto: missing weights are fetched on the first start
    mirror: str | None = field(default=None, metadata={"check": "http_url"})  # serves <name>.pt instead of birder
    url: str | None = field(default=None, metadata={"check": "http_url"})  # where model.file is fetched from
    sha256: str | None = field(default=None, metadata={"check": "sha256"})  # model.file's SHA-256, checked at start


@dataclass
class EngineConfig:
    """How inference runs. `birdwatch bench --tune` measures the choices on this machine."""

    # Where the classifier and the detector run. auto: each installed backend is timed at the first
    # start (cached with the export in <models_dir>/compiled) and the fastest runs.
    backend: Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt"] = "auto"

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 where the hardware has it
    channels_last: bool | None = None  # None: on (faster for birder's convnets on CPU and GPU)
    compile: bool = False  # torch.compile the classifier (slow start, faster steady state on GPU)
    workers: int = field(default=0, metadata=_range(0, 64))  # classify workers; 0: auto (CPU: one per core, up to 4)
    threads: int = field(default=0, metadata=_range(0, 256))  # torch CPU threads per worker; 0: cores / workers
    max_wait_ms: float = field(default=20.0, metadata=_range(0, 5000))  # a partial batch waits at most this
    queue_per_camera: int = field(default=4, metadata=_range(1, 256))  # frames waiting for the classifier


@dataclass
class MqttTlsConfig:
    """TLS to the broker. Present (even empty, `tls: {}`) means TLS on, verified against the system CAs."""

    ca_file: str | None = field(default=None, metadata={"check": "readable_file", **PATH})  # CA that signed the broker
    cert_file: str | None = field(default=None, metadata={"check": "readable_file", **PATH})  # client certificate (PEM)
    key_file: str | None = field(default=None, metadata={"check": "readable_file", **PATH})  # its private key (PEM)
    insecure: bool = False  # skip the host name check (the certificate chain is still verified)


@dataclass
class DetectorConfig:
    """The detection head on the classifier's backbone (`localiser: detector` or `detector+motion`)."""

    file: str | None = field(default=None, metadata=PATH)  # head.pt from `birdwatch detector train`
    score_threshold: float = field(default=0.4, metadata=_range(0.0, 1.0))  # boxes scoring less are dropped
    nms_iou: float = field(default=0.5, metadata=_range(0.05, 1.0))  # overlap above which the weaker box goes
    max_detections: int = field(default=20, metadata=_range(1, 300))  # per frame
    max_size: int | None = field(default=None, metadata=_range(64, 4096))  # frame's longer side; None: head's size
    region_size: int = field(default=320, metadata=_range(64, 2048))  # detector+motion: regions resized to this
    region_padding: float = field(default=1.0, metadata=_range(0.0, 4.0))  # grow motion boxes by this fraction
    max_regions: int = field(default=4, metadata=_range(1, 32))  # per frame; more are merged into one
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # backbone autocast; auto as engine.precision
    channels_last: bool = False  # NHWC memory layout for the shared backbone


TEACHER_CPU_FPS = 1.0  # teacher.max_fps auto on a CPU: a pass of D-FINE L costs 1.7 s on two cores


@dataclass
class TeacherConfig:
    """A generic pretrained birder detector that tells birds from cats, dogs and people (`localiser: teacher`,
    and the labeller of `birdwatch detector label`). Fetched into model.models_dir like the classifier."""

    name: str = "d_fine_l_objects365-coco_hgnet_v2_b4_pp-imagenet22k"  # a birder pretrained detector (COCO classes)
    file: str | None = field(default=None, metadata=PATH)  # a local birder detection .pt file; overrides `name`
    network: str | None = None  # birder detection network of `file` (e.g. d_fine_l) when its name does not say
    backbone: str | None = None  # its backbone network (e.g. hgnet_v2_b4)
    url: str | None = field(default=None, metadata={"check": "http_url"})  # where teacher.file is fetched from
    sha256: str | None = field(default=None, metadata={"check": "sha256"})  # teacher.file's SHA-256
    size: int | None = field(default=None, metadata=_range(64, 2048))  # input side, pixels; None: the weights' own
    score_threshold: float = field(default=0.4, metadata=_range(0.0, 1.0))  # boxes scoring less are dropped
    # `detector label`: a bird box at least this sure is a label for the head. Surer than a localiser's single
    # frame needs to be (a visit outvotes one wrong frame; a wrong label is learnt), so leaves stay background.
    label_score: float = field(default=0.6, metadata=_range(0.0, 1.0))
    bird_classes: list[str] = field(default_factory=list)  # its classes that are birds; empty: by name
    other_classes: list[str] = field(default_factory=list)  # classes kept as not a bird; empty: the animals
    # Per camera, at most this many teacher passes a second; 0: auto (1 on a CPU, every frame on a GPU).
    max_fps: float = field(default=0.0, metadata=_range(0.0, 1000.0))
    # Run it only on frames where something moved: auto gates on a CPU, where a pass costs seconds.
    motion_gate: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast; auto as engine.precision


@dataclass
class MqttConfig:
    host: str | None = None  # no host: events are only logged
    port: int = field(default=1883, metadata=_range(1, 65535))
    username: str | None = None
    password: str | None = None
    password_file: str | None = field(default=None, metadata=PATH)
    password_env: str | None = None
    client_id: str | None = None  # None: birdwatch-<hostname>-<topic_prefix>, unique per instance
    topic_prefix: str = field(default="birdwatch", metadata={"check": "topic_prefix"})
    keepalive_s: int = field(default=30, metadata=_range(5, 3600))
    qos: Literal[0, 1, 2] = 1
    reconnect_max_s: float = field(default=60.0, metadata=_range(1, 3600))
    tls: MqttTlsConfig | None = None  # null: plain TCP

    def password_value(self) -> str | None:
        """The password from wherever the config says it lives; read at start-up, never logged."""
        return _secrets.password_value(self)


@dataclass
class TrackingConfig:
    """Associating a camera's boxes across frames: one track per bird, a visit per confirmed track."""

    iou_threshold: float = field(default=0.2, metadata=_range(0.01, 1.0))  # least overlap with the predicted box
    min_hits: int = field(default=3, metadata=_range(1, 1000))  # crops before a track is a visit
    timeout_s: float = field(default=5.0, metadata=_range(0.1, 3600))  # no crop for this long: the visit ends
    max_tracks: int = field(default=16, metadata=_range(1, 1024))  # per camera; the stalest is dropped beyond


@dataclass
class EventsConfig:
    """Which visits are told, and how often a visit may speak."""

    min_score: float = field(default=0.5, metadata=_range(0.0, 1.0))  # voted score a visit needs to be told
    # The localiser's mean bird score a visit needs to be told (detector or teacher; motion has none): as sure
    # as a label (teacher.label_score). On bench/teacher.py's test days the learnt head told 3 false visits in
    # 34 at 0.6, 6 in 37 at 0.55, 12 in 44 at 0.5; the teacher 1 in 32, 2 in 35, 2 in 36.
    min_bird_score: float = field(default=0.6, metadata=_range(0.0, 1.0))
    cooldown_s: float = field(default=30.0, metadata=_range(0.0, 86400))  # same camera+species again: quiet
    update_min_score_change: float = field(default=0.1, metadata=_range(0.0, 1.0))  # what counts as material
    update_min_interval_s: float = field(default=2.0, metadata=_range(0.0, 3600))  # between two updates
    heartbeat_s: float = field(default=0.0, metadata=_range(0.0, 86400))  # update at least this often; 0: never
    allow: list[str] = field(default_factory=list)  # species names; empty: every species
    block: list[str] = field(default_factory=list)  # species names never told


@dataclass
class SnapshotsConfig:
    enabled: bool = True
    dir: str = field(
        default="snapshots", metadata=PATH
    )  # relative to the working directory (/var/lib/birdwatch under systemd)
    quality: int = field(default=90, metadata=_range(10, 100))  # JPEG quality
    full_frame: bool = True  # also keep the whole frame with the box drawn
    mqtt: bool = True  # publish the crop (raw JPEG) on <prefix>/<camera>/snapshot
    max_age_days: float = field(default=30.0, metadata=_range(0.0, 36500))  # 0: no age limit
    max_total_mb: float = field(default=1024.0, metadata=_range(0.0, 10_000_000))  # 0: no size limit
    max_files: int = field(default=20000, metadata=_range(0, 100_000_000))  # 0: no count limit


@dataclass
class HomeAssistantConfig:
    discovery: bool = True  # publish retained discovery configs on every connect
    discovery_prefix: str = field(default="homeassistant", metadata={"check": "topic_prefix"})


@dataclass
class StoreConfig:
    path: str = field(
        default="birdwatch.db", metadata=PATH
    )  # SQLite: outbox and event history; relative to the working directory
    retention_days: float = field(default=365.0, metadata=_range(1.0, 36500))  # delivered events older go
    # While the history refuses writes (a full, read-only or failing disk), it is opened again this often;
    # events are told live meanwhile and kept in memory.
    retry_s: float = field(default=60.0, metadata=_range(0.5, 3600))


@dataclass
class RecordConfig:
    """Your own footage for `birdwatch detector label` and `birdwatch learn`: frames where something moved,
    kept while birdwatch runs (or by `birdwatch record`), rate-limited, deduplicated, within a disk budget."""

    enabled: bool = False
    dir: str = field(
        default="recordings", metadata=PATH
    )  # relative to the working directory (/var/lib/birdwatch under systemd)
    every_s: float = field(default=2.0, metadata=_range(0.05, 86400))  # per camera, at most one frame this often
    budget_mb: float = field(default=2000.0, metadata=_range(1.0, 10_000_000))  # beyond: the most crowded hour thins
    max_distance: int = field(default=24, metadata=_range(0, 256))  # dHash bits within which a frame is the same again


@dataclass
class LocationConfig:
    """Where the feeder is, for the eBird export (`birdwatch export visits --ebird`)."""

    name: str = ""  # eBird's location name, e.g. "Back garden feeder"; empty: the camera's name
    latitude: float | None = field(default=None, metadata=_range(-90, 90))
    longitude: float | None = field(default=None, metadata=_range(-180, 180))
    state: str = ""  # state or province code, e.g. "BY", "NY"
    country: str = ""  # ISO 3166-1 alpha-2, e.g. "DE", "US"


@dataclass
class MetricsConfig:
    """Prometheus /metrics and /healthz over HTTP. Off by default; loopback only unless `bind` says otherwise."""

    enabled: bool = False
    bind: str = field(default="127.0.0.1", metadata={"check": "bind_address"})  # 0.0.0.0: every interface
    port: int = field(default=9464, metadata=_range(1, 65535))


@dataclass
class WebConfig:
    """The page (birdwatch/web): on by default, this machine only. Viewing is open to whoever can reach it from
    this machine; a correction, an export or any other change needs the password, and so does viewing from
    elsewhere unless `public_view` says otherwise. Bound beyond loopback, a password is required."""

    enabled: bool = True
    bind: str = field(default="127.0.0.1", metadata={"check": "bind_address"})  # 0.0.0.0: every interface
    port: int = field(default=8765, metadata=_range(1, 65535))
    password_file: str | None = field(default=None, metadata=PATH)  # the password on one line
    password_env: str | None = None  # or the environment variable holding it
    public_view: bool = False  # beyond loopback, viewing without the password too (writes still need it)
    review_below: float = field(default=0.7, metadata=_range(0.0, 1.0))  # a visit less sure than this: review it

    def password_value(self) -> str | None:
        """The page's password (or API token), read at start-up, never logged."""
        return _secrets.web_password_value(self)


@dataclass
class MemoryConfig:
    """The feeder memory (decide/memory.py): the embeddings of the visits people corrected or confirmed, per
    camera; a crop that looks like them leans toward their names."""

    enabled: bool = True
    strength: float = field(default=0.6, metadata=_range(0.0, 1.0))  # how far a close memory moves the scores
    neighbours: int = field(default=5, metadata=_range(1, 100))  # the nearest remembered crops that vote
    # Cosine similarity below which a remembered crop is too unlike to have a say; at 1 it would be the same crop.
    min_similarity: float = field(default=0.5, metadata=_range(-1.0, 1.0))
    # How much a nearer neighbour outvotes a farther one: one `temperature` less alike counts e times less.
    temperature: float = field(default=0.05, metadata=_range(0.001, 10.0))
    # A visit less sure of its species than this, and like none of the camera's remembered birds, is `novel`.
    novel_below: float = field(default=0.6, metadata=_range(0.0, 1.0))


@dataclass
class Config:
    cameras: list[CameraConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    localiser: Literal["motion", "detector", "detector+motion", "teacher"] = "motion"
    engine: EngineConfig = field(default_factory=EngineConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    location: LocationConfig = field(default_factory=LocationConfig)
    web: WebConfig = field(default_factory=WebConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    stats_interval_s: float = field(default=60.0, metadata=_range(1, 86400))

    def secrets(self) -> list[str]:
        """Strings that must never reach a log line."""
        return _secrets.secrets(self)

    def inline_secrets(self) -> list[str]:
        """Key paths whose value in the file itself is a secret (so the file must not be readable by others)."""
        return _secrets.inline_secrets(self)
