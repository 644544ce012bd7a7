"""What can be checked here of the images and manifests, without a Docker engine or a cluster:
hadolint on every Dockerfile, kustomize renders validated by kubernetes-validate --strict,
the KServe container validated as a Pod, compose.yaml against the compose spec."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool from this venv (installed by the test extra), else from PATH."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is not installed: pip install -e '.[test]'"
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_hadolint_is_clean(dockerfile: str) -> None:
    result = run(tool("hadolint"), str(ROOT / dockerfile))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize(
    ("dockerfile", "lock"), [("Dockerfile", "cpu"), ("Dockerfile.cuda", "gpu")]
)
def test_images_are_multi_stage_non_root_and_pinned(dockerfile: str, lock: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert 'ENTRYPOINT ["python", "-m", "service"]' in text
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M):
        assert re.search(r":\d+\.\d+", image) and "latest" not in image, image
    assert f"--require-hashes --only-binary=:all: -r requirements/{lock}.lock" in text


def test_locks_pin_every_dependency_and_one_runtime_each() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra, runtime, other in (
        ("cpu", "onnxruntime", "onnxruntime-gpu"),
        ("gpu", "onnxruntime-gpu", "onnxruntime"),
    ):
        text = (ROOT / "requirements" / f"{extra}.lock").read_text()
        pinned = {
            m.lower().replace("_", "-") for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.M)
        }
        wanted = {
            re.split(r"[<>=\[ ]", dep)[0].lower().replace("_", "-")
            for dep in [*project["dependencies"], *project["optional-dependencies"]["tracing"]]
        }
        assert wanted <= pinned, wanted - pinned
        assert runtime in pinned and other not in pinned
        assert text.count("==") == text.count("--hash=sha256:")


def _render(overlay: str) -> list[dict]:
    result = run(tool("kubectl"), "kustomize", str(ROOT / "deploy" / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _validate(path: Path) -> None:
    result = run(tool("kubernetes-validate"), "--strict", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_render_and_validate_strictly(overlay: str, tmp_path: Path) -> None:
    docs = _render(overlay)
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    _validate(rendered)

    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["image"].endswith("-cuda") and env["SCE_PROVIDERS"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert env["SCE_PROVIDERS"] == "cpu"


def test_kserve_inference_service_container_is_a_valid_pod(tmp_path: Path) -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    containers = service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in containers[0]["env"]}
    # Serverless: Knative sets PORT to the containerPort (and refuses a PORT of ours), and
    # SCE_PORT would win over it, so neither is set here.
    assert "SCE_PORT" not in env and "PORT" not in env
    assert containers[0]["ports"][0]["containerPort"] == 8080
    # No schema for the CRD here: its container spec is checked as a core Pod's.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-check"},
        "spec": {"containers": containers},
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    _validate(path)


def test_kserve_inference_service_is_serverless_and_scales_on_concurrency() -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    # Knative's rules: the concurrency metric needs its own pod autoscaler (KPA), and the
    # target is a string holding a number >= 0.01 (annotations are strings).
    assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    target = annotations["autoscaling.knative.dev/target"]
    assert isinstance(target, str) and float(target) >= 0.01
    # One worker per pod (no SCE_WORKERS) saturates at about 8 in flight (docs/benchmarks.md
    # (b), (j)): a target well above that only queues, well below wastes pods.
    (container,) = service["spec"]["predictor"]["containers"]
    assert "SCE_WORKERS" not in {e["name"] for e in container["env"]}
    assert 4 <= float(target) <= 16
    # A hard limit would refuse by count what the service admits by memory cost.
    assert "containerConcurrency" not in service["spec"]["predictor"]
    assert service["spec"]["predictor"]["minReplicas"] >= 1  # no cold starts from zero


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_images_leave_the_port_to_the_platform(dockerfile: str) -> None:
    """An image with SCE_PORT baked in would ignore the PORT that Knative sets."""
    text = (ROOT / dockerfile).read_text()
    assert "SCE_PORT=" not in text
    healthcheck = text[text.index("HEALTHCHECK") :]
    assert "os.environ.get('SCE_PORT') or os.environ.get('PORT') or '8000'" in healthcheck


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(ROOT / "deploy" / "compose.yaml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
