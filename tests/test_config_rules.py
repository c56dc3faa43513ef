"""Everything that can be checked when the config loads is checked then: cross-key rules, the MQTT TLS
files, the model device, the metrics port against a local broker; and `check-config` also reads the
weights' species (without building the network) to catch a typo in events.allow/block."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from birdwatch.classify.models import class_names_of
from birdwatch.classify.models import classifier_weights
from birdwatch.classify.models import resolve_device
from birdwatch.cli import main
from birdwatch.config import RULES
from birdwatch.config import parse_config
from birdwatch.errors import ConfigError
from birdwatch.errors import ModelError
from tests.fixtures_models import SMALL
from tests.fixtures_models import species_names
from tests.support.pki import Pki
from tests.support.pki import make_pki

MINIMAL = "cameras:\n  - name: feeder\n    url: rtsp://cam.local/stream\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_every_rule_is_a_named_function_that_says_in_one_line_what_it_requires() -> None:
    names = [rule.__name__ for rule in RULES]
    assert len(set(names)) == len(names) >= 12
    for rule in RULES:
        doc = inspect.getdoc(rule)
        assert doc and "\n" not in doc, f"{rule.__name__}: a one-line docstring"


# ---- MQTT TLS files -------------------------------------------------------------------------------


def tls_config(**files: Path | str) -> str:
    keys = ", ".join(f"{key}: '{value}'" for key, value in files.items())
    return MINIMAL + f"mqtt: {{host: h, port: 8883, tls: {{{keys}}}}}\n"


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_a_missing_tls_file_fails_the_load(pki: Pki, key: str) -> None:
    files: dict[str, Path | str] = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    files[key] = "/no/such/file.pem"
    assert error_of(tls_config(**files)) == (
        f"c.yaml: mqtt.tls.{key}: file '/no/such/file.pem' does not exist; give the path of a PEM file"
    )


def test_tls_files_that_are_not_what_their_key_says_fail_the_load_not_the_start(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("this is not a certificate\n")
    assert error_of(tls_config(ca_file=not_pem)).startswith(
        f"c.yaml: mqtt.tls.ca_file: '{not_pem}' holds no usable CA certificate ("
    )
    mismatch = error_of(tls_config(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.server_key))
    assert mismatch.startswith("c.yaml: mqtt.tls.cert_file/key_file: cannot load") and "its own private key" in mismatch
    encrypted = error_of(tls_config(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key_encrypted))
    assert encrypted.startswith("c.yaml: mqtt.tls.key_file: ") and "is encrypted" in encrypted


def test_good_tls_files_load_and_a_home_relative_path_works(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config(tls_config(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key))
    assert config.mqtt.tls is not None and config.mqtt.tls.key_file == str(pki.client_key)
    monkeypatch.setenv("HOME", str(pki.ca.parent))
    config = parse_config(tls_config(ca_file=f"~/{pki.ca.name}"))  # OpenSSL itself would not expand `~`
    assert config.mqtt.tls is not None and config.mqtt.tls.ca_file == str(pki.ca), "expanded where it is bound"


# ---- model.device ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_on_a_machine_without_one_fails_the_load() -> None:
    assert error_of(MINIMAL + "model: {device: cuda}\n") == (
        "c.yaml: model.device: 'cuda' asked for, but torch sees no CUDA device; use 'auto' or 'cpu'"
    )


def test_device_rules_follow_what_torch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "model.device: 'cuda:0' asked for, but torch sees no CUDA device" in error_of(
        MINIMAL + "model: {device: 'cuda:0'}\n"
    )
    assert error_of(MINIMAL + "model: {device: mps}\n") == (
        "c.yaml: model.device: 'mps' asked for, but MPS is not available; use 'auto' or 'cpu'"
    )
    for spec in ("auto", "cpu"):
        assert parse_config(MINIMAL + f"model: {{device: {spec}}}\n").model.device == spec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for spec in ("cuda", "cuda:0", "cuda:1"):
        assert parse_config(MINIMAL + f"model: {{device: '{spec}'}}\n").model.device == spec
    assert error_of(MINIMAL + "model: {device: 'cuda:2'}\n") == (
        "c.yaml: model.device: 'cuda:2' asked for, but torch sees 2 CUDA device(s), cuda:0 to cuda:1; "
        "use one of those, 'cuda' or 'auto'"
    )


def test_resolve_device_says_the_same_as_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError) as info:
        resolve_device("cuda")  # `birdwatch bench --device` comes here without a config
    assert f"c.yaml: {info.value}" == error_of(MINIMAL + "model: {device: cuda}\n")


# ---- metrics --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_metrics_on_the_port_of_a_broker_on_this_machine_fails_the_load(host: str) -> None:
    text = MINIMAL + f"mqtt: {{host: '{host}', port: 1883}}\nmetrics: {{enabled: true, port: 1883}}\n"
    assert error_of(text) == (
        f"c.yaml: metrics.port: 1883 is also mqtt.port of the broker on this machine ({host}); "
        "choose another metrics.port, e.g. 9464"
    )


def test_metrics_port_may_equal_the_port_of_a_broker_elsewhere_or_when_off() -> None:
    remote = MINIMAL + "mqtt: {host: broker.lan, port: 1883}\nmetrics: {enabled: true, bind: 0.0.0.0, port: 1883}\n"
    assert parse_config(remote).metrics.port == 1883
    off = MINIMAL + "mqtt: {host: localhost, port: 1883}\nmetrics: {enabled: false, port: 1883}\n"
    assert parse_config(off).metrics.enabled is False


@pytest.mark.parametrize("address", ["224.0.0.1", "ff02::1"])
def test_metrics_cannot_listen_on_a_multicast_address(address: str) -> None:
    assert error_of(MINIMAL + f"metrics: {{enabled: true, bind: '{address}'}}\n") == (
        f"c.yaml: metrics.bind: '{address}' is a multicast address, which takes no connections; "
        "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
    )


# ---- check-config and the weights -----------------------------------------------------------------


def test_class_names_of_reads_the_species_without_building_the_network(
    small_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from birder.model_registry import registry

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("class_names_of built a network")

    monkeypatch.setattr(registry, "net_factory", no_network)
    assert class_names_of(small_weights) == species_names(SMALL["classes"])


def test_class_names_of_a_file_that_is_no_birder_checkpoint_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "mobilenet_v3_small_1_0_junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as info:
        class_names_of(junk)
    assert str(info.value).startswith(f"cannot read the species of {junk} (") and "\n" not in str(info.value)


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", "--quiet", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_catches_a_species_typo_against_the_weights(
    tmp_path: Path, small_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + f"model: {{file: '{small_weights}'}}\nevents: {{allow: ['Test species 001']}}\n")
    code, out, err = check_config(path, capsys)
    assert (code, err) == (0, "") and out.endswith(f"{path}: OK (1 camera(s), model {small_weights})\n")

    path.write_text(MINIMAL + f"model: {{file: '{small_weights}'}}\nevents: {{allow: ['Test specis 001']}}\n")
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == ""
    assert err == (
        f"birdwatch: error: {path}: events.allow[0]: 'Test specis 001' is not a species of model "
        f"{small_weights.stem}; did you mean 'Test species 001'?\n"
    )


@pytest.mark.parametrize("model", ["{file: /no/such/weights.pt}", "{models_dir: MODELS, download: never}"])
def test_check_config_without_the_weights_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    model = model.replace("MODELS", str(tmp_path / "models"))
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + f"model: {model}\n")
    with pytest.raises(ModelError) as info:
        classifier_weights(parse_config(path.read_text()).model)
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == ""
    assert err == f"birdwatch: error: {info.value}\n"


def test_check_config_with_weights_still_to_fetch_says_where_they_come_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MINIMAL + f"model: {{models_dir: {tmp_path / 'models'}, mirror: 'http://nas.local/birder'}}\n")
    code, out, err = check_config(path, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        "note: the weights are not here yet; `birdwatch run` fetches them on its first start from "
        "http://nas.local/birder/hgnet_v2_b2_danube-delta.pt (events.allow/block are checked against their species then)"
    )
    assert not (tmp_path / "models").exists(), "check-config fetches nothing"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{url: 'https://nas/x.pt', sha256: SHA}", "model.url: set model.file too"),
        ("{file: FILE, url: 'https://nas/x.pt'}", "model.url: set model.sha256 too"),
        ("{sha256: SHA}", "model.sha256: the hash of model.file; set model.file"),
        ("{file: FILE, url: 'ftp://nas/x.pt', sha256: SHA}", "model.url: 'ftp://nas/x.pt' is not an http(s):// URL"),
        ("{file: FILE, url: 'https://nas/x.pt', sha256: abc}", "model.sha256: 'abc' is not a SHA-256 (64 hex digits)"),
    ],
)
def test_a_model_fetched_from_a_url_needs_its_file_and_hash(tmp_path: Path, model: str, expected: str) -> None:
    model = model.replace("SHA", "a" * 64).replace("FILE", str(tmp_path / "mine.pt"))
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + f"model: {model}\n")
    assert expected in str(info.value)


def test_a_gstreamer_decoder_with_an_opencv_without_gstreamer_fails_the_load() -> None:
    # The pip wheel of OpenCV this project installs has no GStreamer; JetPack's python3-opencv has.
    message = error_of(MINIMAL + "    decoder: jetson\n")
    assert "cameras (feeder): decoder gstreamer/jetson needs OpenCV built with GStreamer" in message
    assert "python3-opencv" in message and "decoder: ffmpeg" in message


def test_the_gstreamer_pipelines_decode_with_decodebin_and_keep_one_frame() -> None:
    from birdwatch.capture.reader import gstreamer_pipeline
    from birdwatch.config import CameraConfig

    jetson = gstreamer_pipeline(CameraConfig(name="f", url="rtsp://cam.local/s", decoder="jetson"))
    assert jetson.startswith('uridecodebin uri="rtsp://cam.local/s" source::protocols=tcp')
    assert (
        "! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
        in jetson
    )
    usb = gstreamer_pipeline(CameraConfig(name="f", url=0, decoder="gstreamer"))
    assert usb.startswith("v4l2src device=/dev/video0 ! decodebin ! videoconvert") and "nvvidconv" not in usb


def test_a_gstreamer_decoder_for_a_video_file_fails_the_load(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    message = error_of(f"cameras:\n  - name: clip\n    url: {clip}\n    decoder: gstreamer\n")
    assert "cameras (clip): decoder gstreamer/jetson is for cameras" in message and "decoder: ffmpeg" in message


# ---- the teacher ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("teacher", "expected"),
    [
        ("{url: 'https://nas/t.pt', sha256: SHA}", "teacher.url: set teacher.file too"),
        ("{file: FILE, url: 'https://nas/t.pt'}", "teacher.url: set teacher.sha256 too"),
        ("{sha256: SHA}", "teacher.sha256: the hash of teacher.file"),
        ("{file: FILE}", "teacher.file: 'FILE' does not exist"),
        ("{max_fps: 0.1}", "tracking.timeout_s: 5.0 s would end every visit between two teacher passes"),
        ("{motion_gate: sometimes}", "teacher.motion_gate"),
    ],
)
def test_a_teacher_config_that_cannot_work_fails_the_load(tmp_path: Path, teacher: str, expected: str) -> None:
    missing = str(tmp_path / "teacher.pt")
    teacher = teacher.replace("SHA", "b" * 64).replace("FILE", missing)
    assert expected.replace("FILE", missing) in error_of(MINIMAL + f"localiser: teacher\nteacher: {teacher}\n")


def test_the_teacher_by_default_is_birders_coco_detector_gated_on_a_cpu() -> None:
    config = parse_config(MINIMAL + "localiser: teacher\n")
    assert config.teacher.name == "d_fine_l_objects365-coco_hgnet_v2_b4_pp-imagenet22k"
    assert (config.teacher.max_fps, config.teacher.motion_gate) == (0.0, "auto")
