"""The deployment files, checked where no container engine or cluster runs.

(The image itself is built and driven by scripts/container-check.sh, by hand before a
release: docs/deploy.md, "The image, built and run".)

- `Dockerfile`: its stages, a non-root runtime without build tools, the install through
  scripts/install.sh (the script `make venv` and CI run), the entrypoint, the health check,
  what a build without registry or PyPI access needs.
- `docker/compose*.yaml`, `docker/prometheus.yml`: what each service mounts exists, the
  proxy waits for healthy replicas, Prometheus finds the replicas.
- `docker/k8s/*.yaml`: every object validates against the Kubernetes API schema (the
  official client's models refuse unknown fields and wrong types); probes hit real routes;
  labels, selectors and names line up; the HPA scales on a metric the service exports.
- Everywhere: every `MAE_*` variable set is a field of `service.settings.Settings`, and
  its value passes Settings' validation.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"


# -- settings -------------------------------------------------------------------------------
def settings_vars() -> set[str]:
    return {f"MAE_{name.upper()}" for name in Settings.model_fields}


def compose_default(value: Any) -> str:
    """`${VAR:-default}` -> default (what compose uses when VAR is unset)."""
    text = str(value)
    return re.sub(r"\$\{[A-Z_]+:?-([^}]*)\}", r"\1", text)


def check_mae_env(env: dict[str, Any], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mae = {k: compose_default(v) for k, v in env.items() if k.startswith("MAE_")}
    unknown = sorted(set(mae) - settings_vars())
    assert not unknown, f"{where} sets {unknown}, which the service does not read"
    for key in list(os.environ):
        if key.startswith("MAE_"):
            monkeypatch.delenv(key)
    for key, value in mae.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # raises on a value the service would refuse
    for key, value in mae.items():
        field = key.removeprefix("MAE_").lower()
        assert getattr(settings, field) is not None, f"{where}: {key}={value}"


def test_settings_check_catches_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssertionError, match="MAE_MAX_BATCH_IMAGE"):
        check_mae_env({"MAE_MAX_BATCH_IMAGE": "8", "MAE_MODEL": "x"}, "test", monkeypatch)
    with pytest.raises(ValueError, match="max_batch_images"):
        check_mae_env({"MAE_MAX_BATCH_IMAGES": "zero", "MAE_MODEL": "x"}, "test", monkeypatch)


def test_every_mae_variable_named_in_the_deployment_files_is_a_setting() -> None:
    files = [ROOT / "Dockerfile", ROOT / "docs" / "deploy.md", *DOCKER.rglob("*.y*ml")]
    files += [DOCKER / "nginx" / "mae.conf"]
    for path in files:
        named = set(re.findall(r"\bMAE_[A-Z_]+[A-Z]\b", path.read_text()))
        unknown = sorted(named - settings_vars())
        assert not unknown, f"{path.relative_to(ROOT)} names {unknown}: not service settings"


# -- Dockerfile -----------------------------------------------------------------------------
def stages() -> dict[str, list[dict[str, Any]]]:
    """Stage name -> its instructions (FROM included), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for ins in DockerfileParser(path=str(ROOT / "Dockerfile")).structure:
        if ins["instruction"] == "FROM":
            name = ins["value"].split()[-1] if " AS " in ins["value"].upper() else ""
            current = out.setdefault(name, [])
        if ins["instruction"] != "COMMENT":
            current.append(ins)
    return out


def instructions(stage: list[dict[str, Any]], kind: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == kind]


def env_of(stage: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in instructions(stage, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", value)))
    return env


def runtime_chain(name: str) -> list[list[dict[str, Any]]]:
    """The instructions of `name` and of the stages it is built FROM, base first."""
    all_stages, chain = stages(), []
    while name in all_stages:
        chain.insert(0, all_stages[name])
        name = all_stages[name][0]["value"].split()[0]
    return chain


def test_dockerfile_has_a_cpu_and_a_cuda_target_cuda_by_default() -> None:
    names = list(stages())
    assert {"wheel", "venv-cpu", "venv-cuda", "runtime", "cpu", "cuda"} <= set(names)
    assert names[-1] == "cuda"  # `docker build .` builds the GPU image


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_runtime_is_non_root_without_build_tools(target: str, monkeypatch) -> None:
    chain = [i for stage in runtime_chain(target) for i in stage]
    users = instructions(chain, "USER")
    assert users and users[-1] not in ("root", "0"), users
    assert not instructions(chain, "RUN")[1:], "only the user is created in the runtime stages"
    copies = instructions(chain, "COPY")
    assert f"--from=venv-{target} /opt/mae /opt/mae" in copies
    assert not [c for c in copies if "--from=wheel" in c], "the wheel stays in its own stage"
    text = " ".join(i["value"] for i in chain)
    for tool in ("gcc", "build-essential", "apt-get", "pip install"):
        assert tool not in text
    env = env_of(chain)
    assert env["MAE_MODELS_DIR"] == "/models"
    assert "/models" in " ".join(instructions(chain, "VOLUME"))
    check_mae_env(env, f"Dockerfile target {target}", monkeypatch)


def test_image_installs_through_the_shared_script() -> None:
    all_stages = stages()
    for target in ("venv-cpu", "venv-cuda"):
        runs = " ".join(instructions(all_stages[target], "RUN"))
        assert "install.sh /opt/mae /wheels/*.whl" in runs
        assert "scripts/install.sh /tmp/install.sh" in instructions(all_stages[target], "COPY")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in " ".join(
        instructions(all_stages["venv-cpu"], "RUN")
    )
    assert "pip wheel" in " ".join(instructions(all_stages["wheel"], "RUN"))
    # make venv (and so CI) runs the same script; the pins live only there.
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/install.sh $(VENV) -e '.[dev]'" in makefile
    assert "torch==" not in makefile and "pip install" not in makefile
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)" in script


def test_entrypoint_listens_on_all_interfaces_and_the_health_check_asks_ready() -> None:
    runtime = stages()["runtime"]
    (entry,) = instructions(runtime, "ENTRYPOINT")
    assert entry.startswith('["mae", "serve", "--host", "0.0.0.0", "--port", "8000"')
    assert instructions(runtime, "EXPOSE") == ["8000"]
    (check,) = instructions(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/ready" in check and "--start-period=" in check


def dockerignore_allows(path: str) -> bool:
    """Docker's rule for a path at the top of the context: the last matching line wins."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!")
        if fnmatch.fnmatch(path, pattern) and (pattern != "*" or "/" not in path):
            allowed = negate
    return allowed


def test_dockerfile_builds_without_a_registry_or_pypi() -> None:
    """What scripts/container-check.sh relies on, and any offline or mirrored build."""
    text = (ROOT / "Dockerfile").read_text()
    # A `# syntax=` directive makes every build pull its frontend image from Docker Hub.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    all_stages = stages()
    for name in ("wheel", "venv-cpu", "venv-cuda"):
        args = {a.split("=")[0] for a in instructions(all_stages[name], "ARG")}
        assert {"PIP_INDEX_URL", "PIP_TRUSTED_HOST"} <= args, f"{name}: pip's mirror settings"
        # `python3`: every Python image has it; Debian's own python3.11 has no `python`.
        runs = " ".join(instructions(all_stages[name], "RUN"))
        assert not re.search(r"(^|[\s=])python\s", runs), f"{name}: {runs}"


def test_container_check_reads_compose_as_it_is_written() -> None:
    """scripts/container-check.sh runs the replicas with the mae service's environment
    defaults and stop_grace_period, read with sed: they must keep the forms it reads."""
    script = ROOT / "scripts" / "container-check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    mae = compose()["services"]["mae"]
    for key, value in mae["environment"].items():
        assert re.fullmatch(r"(MAE|HF)_[A-Z_]+", key), key
        assert re.fullmatch(r"\$\{[A-Z_]+:-.*\}", str(value)), f"{key}: {value}"
    assert re.fullmatch(r"\d+s", mae["stop_grace_period"])
    pins = re.search(r"^TORCH_PINS=\((.*)\)$", (ROOT / "scripts" / "install.sh").read_text(), re.M)
    assert pins and "torch==" in pins.group(1)  # the wheelhouse downloads these


def test_every_copied_path_is_in_the_build_context_and_nothing_else() -> None:
    sources = set()
    for stage in stages().values():
        for value in instructions(stage, "COPY"):
            parts = [p for p in value.split() if not p.startswith("--")]
            if "--from=" not in value:
                sources.update(parts[:-1])
    assert sources >= {"pyproject.toml", "README.md", "mae_core", "service", "models"}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
        assert dockerignore_allows(src), f"COPY {src}, but .dockerignore leaves it out"
    for private in (".venv", ".git", "runs", "tests", "bench", "dist", "build"):
        assert not dockerignore_allows(private), f".dockerignore lets {private} in"


# -- compose --------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_replicas_proxy_and_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    mae, proxy, prom = services["mae"], services["proxy"], services["prometheus"]
    assert (DOCKER / mae["build"]["context"] / "Dockerfile").is_file()
    assert compose_default(mae["build"]["target"]) in stages()
    assert int(compose_default(mae["deploy"]["replicas"])) >= 2
    check_mae_env(mae["environment"], "compose service mae", monkeypatch)
    # The models folder is shared read-only, from a path that exists in the checkout.
    (models,) = mae["volumes"]
    host, target, mode = compose_default(models).split(":")
    assert target == "/models" and mode == "ro" and (DOCKER / host).is_dir()
    # SIGTERM drains for up to MAE_REQUEST_TIMEOUT_S + 5 s: Docker must wait longer.
    grace = int(mae["stop_grace_period"].removesuffix("s"))
    timeout = float(compose_default(mae["environment"]["MAE_REQUEST_TIMEOUT_S"]))
    assert grace > timeout + 5
    # nginx: the shipped proxy file, started once the replicas are healthy.
    assert proxy["depends_on"]["mae"]["condition"] == "service_healthy"
    conf = [v for v in proxy["volumes"] if "nginx" in v]
    assert conf == ["./nginx/mae.conf:/etc/nginx/conf.d/default.conf:ro"]
    text = (DOCKER / "nginx" / "mae.conf").read_text()
    assert re.search(r"^\s*server mae:8000 .* resolve;", text, re.M), "nginx must follow `mae`"
    assert re.search(r"^resolver 127\.0\.0\.11 ", text, re.M)  # Docker's DNS
    assert re.search(r"^\s*listen 8080;", text, re.M)
    assert any(str(p).endswith(":8080") for p in proxy["ports"])
    # Prometheus finds every replica by the service's DNS name, on the port they serve.
    host_file, target = prom["volumes"][0].split(":")[:2]
    assert target == "/etc/prometheus/prometheus.yml"
    scrape = yaml.safe_load((DOCKER / host_file).read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "mae"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["mae"] and sd["port"] == 8000


def test_compose_gpu_override_pins_one_gpu_per_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    override = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]
    gpu_services = {name: svc for name, svc in override.items() if name.startswith("mae")}
    assert len(gpu_services) >= 2
    devices = []
    for name, svc in gpu_services.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert "count" not in device, f"{name}: Docker would give every replica the same GPU"
        devices += device["device_ids"]
        # nginx (server mae:8000 resolve) and Prometheus (dns_sd mae) find them by name.
        assert name == "mae" or svc["networks"]["default"]["aliases"] == ["mae"]
        check_mae_env(svc["environment"], f"compose.gpu.yaml {name}", monkeypatch)
        assert svc["environment"]["MAE_DEVICE"] == "cuda"
        assert name == "mae" or set(override["proxy"]["depends_on"]) >= {name}
    assert len(devices) == len(set(devices)), devices
    assert override["mae"]["deploy"]["replicas"] == 1
    assert override["mae"]["build"]["target"] == "cuda"


def test_compose_hub_profile_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    hub = services["hub"]
    assert hub["profiles"] == ["hub"] and hub["command"] == ["--hub-only"]
    # No required (`:?`) variable anywhere: compose interpolates the whole file, profiles
    # or not, so one would break the plain `docker compose up`.
    assert ":?" not in (DOCKER / "compose.yaml").read_text()
    check_mae_env({**hub["environment"], "MAE_HUB_ONLY": "true"}, "hub", monkeypatch)
    (volume,) = hub["volumes"]
    assert volume.split(":")[0] in compose()["volumes"]  # a named volume, owned by mae


# -- Kubernetes -----------------------------------------------------------------------------
def k8s_objects() -> dict[str, dict[str, Any]]:
    """kind -> object, for every manifest the kustomization lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            objects[doc["kind"]] = doc
    return objects


MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}


def test_every_manifest_is_listed_and_validates_against_the_api_schema() -> None:
    from kubernetes.client import models

    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "adapter-rules.yaml"}
    assert listed == on_disk
    objects = k8s_objects()
    assert {kind for _, kind in MODELS} == set(objects)
    for obj in objects.values():
        model = getattr(models, MODELS[(obj["apiVersion"], obj["kind"])])
        model.model_validate(obj)  # pydantic, extra="forbid": a misspelt field fails here


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    from kubernetes.client import models

    deployment = k8s_objects()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValueError, match="readinesProbe"):
        models.V1Deployment.model_validate(deployment)


def test_deployment_probes_gpu_env_and_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = k8s_objects()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    check_mae_env({e["name"]: e["value"] for e in container["env"]}, "deployment", monkeypatch)
    routes = set(create_app(Settings(hub_only=True)).openapi()["paths"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}  # the port the image's entrypoint listens on
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes and get["port"] in ports
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    # The image's user, and a grace period longer than the drain.
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert "useradd --system --uid 10001" in " ".join(instructions(stages()["runtime"], "RUN"))
    env = {e["name"]: e["value"] for e in container["env"]}
    drain = float(
        env.get("MAE_REQUEST_TIMEOUT_S", Settings.model_fields["request_timeout_s"].default)
    )
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + 5 + pre_stop
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert {"/tmp", "/home/mae/.cache"} <= set(mounts)  # the root filesystem is read-only


def test_labels_selectors_and_names_line_up() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        objects["Service"]["spec"]["selector"],
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    (port,) = objects["Service"]["spec"]["ports"]
    assert port["targetPort"] == "http"
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [objects["PersistentVolumeClaim"]["metadata"]["name"]]


def test_hpa_scales_on_a_metric_the_service_exports() -> None:
    exported = {m.name for m in Metrics().registry.collect()}
    hpa = k8s_objects()["HorizontalPodAutoscaler"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name == "mae_queue_images" and name in exported
    rules = yaml.safe_load((K8S / "adapter-rules.yaml").read_text())["rules"]["custom"]
    assert any(r["name"]["as"] == name and name in r["seriesQuery"] for r in rules)
    # About two batches waiting per pod (docs/deploy.md, "Autoscaling").
    env = {
        e["name"]: e["value"]
        for e in k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    batch = int(env["MAE_MAX_BATCH_IMAGES"])
    assert int(metric["pods"]["target"]["averageValue"]) == 2 * batch
    assert int(env["MAE_MAX_QUEUE_IMAGES"]) > 2 * batch  # the HPA acts before the 429s start
