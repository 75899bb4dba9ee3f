"""deploy/kubernetes/: the Kustomize manifests rendered (by the small renderer below, and by kubectl or
kustomize where one is installed), validated against the Kubernetes API's JSON schemas offline
(kubernetes-validate), and checked against RAPL itself: its settings, its port, its /health states, its
stop, and the image the Dockerfile builds. No cluster and no network.

The checks are functions that return what is wrong, so the same checks also run on broken copies of
the manifests (test_checks_catch_broken_manifests): they must fail there.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from rapl.settings import SPEC, Settings, SettingsError
from support import ROOT
from support.fake_backend import FakeBackend
from support.net import free_port
from support.server import wait_until
from support.speech import tone, wav_bytes

KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = KUBE / "Dockerfile"
# Rendered here: the two kustomizations users apply, and each with the optional queue-depth component
# (through an overlay the test writes, as the component's comment tells users to).
KUSTOMIZATIONS = ("base", "overlays/gpu")
COMPONENT = "components/queue-depth"
WITH_QUEUE = {"base+queue-depth": "../../base", "gpu+queue-depth": "../../overlays/gpu"}
# Environment variables the manifests may set that are not RAPL settings (rapl.settings.SPEC): the hub
# libraries' caches, and where anything else that writes under the home directory goes.
NOT_SETTINGS = {"HF_HOME", "MODELSCOPE_CACHE", "TORCH_HOME", "HOME", "XDG_CACHE_HOME"}
CACHES = ("HF_HOME", "MODELSCOPE_CACHE", "TORCH_HOME")  # must be on the model volume
READY_STATES = ("ready", "unloading", "unloaded")  # what rapl.http.api.health answers 200 for
PROBE_ADDRESS = re.compile(r'HTTPConnection\("127\.0\.0\.1", (\d+)')
OLDEST_KUBERNETES = "1.29"  # the schemas checked: this one and the newest kubernetes-validate ships

Objects = list[dict[str, Any]]


# -- rendering ---------------------------------------------------------------------------------

# Strategic merge: lists of these fields merge by this key (as the API's patchMergeKey says); any other
# list is replaced. That is all the patches here need; kubectl/kustomize, where installed, check it.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "name"}
KNOWN_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images"}


def load_yaml(path: Path) -> Objects:
    """The non-empty YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into ``base`` the way a strategic merge patch is (for what MERGE_KEYS covers)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = list(base)
        for item in patch:
            at = next((i for i, old in enumerate(merged_list) if old.get(key) == item.get(key)), None)
            if at is None:
                merged_list.append(item)
            else:
                merged_list[at] = merge(merged_list[at], item)
        return merged_list
    return patch


def pod_containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers (and init containers) of a workload's pod template."""
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def render(directory: Path, objects: Objects | None = None) -> Objects:
    """What ``kustomize build directory`` gives, for the kustomization features these manifests use.

    PyPI has no Python kustomize that renders (its "kustomize" package writes kustomization files from
    Python ones) and kubectl is not always installed, so this small renderer does resources, components,
    file patches (strategic merge) and images; a kustomization using anything else fails here, naming it.
    """
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_FIELDS
    assert not unknown, f"{directory}: the test's renderer does not know {sorted(unknown)}: teach it"
    objects = [] if objects is None else objects
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_yaml(path)
    for entry in spec.get("components", []):
        objects = render(directory / entry, objects)
    for entry in spec.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: the test's renderer knows file patches only: {entry}"
        for patch in load_yaml(directory / entry["path"]):
            at = [i for i, obj in enumerate(objects) if key(obj) == key(patch)]
            assert len(at) == 1, f"{directory}/{entry['path']}: patches {key(patch)}, which is not there"
            objects[at[0]] = merge(objects[at[0]], patch)
    for image in spec.get("images", []):
        for obj in objects:
            for each in pod_containers(obj):
                name, _, tag = each["image"].partition(":")
                if name == image["name"]:
                    name, tag = image.get("newName", name), image.get("newTag", tag)
                    each["image"] = f"{name}:{tag}" if tag else name
    return objects


def key(obj: dict[str, Any]) -> tuple[str, str]:
    """An object's kind and name."""
    return obj["kind"], obj["metadata"]["name"]


def kustomize_command() -> list[str] | None:
    """kubectl kustomize, or kustomize build, where either is installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with an overlay per WITH_QUEUE entry that adds the queue-depth component."""
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBE, root)
    for name, resource in WITH_QUEUE.items():
        overlay = root / "overlays" / name
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [resource], "components": [f"../../{COMPONENT}"]}))
    return root


def where(name: str) -> str:
    """The folder of a rendered set under the tree."""
    return name if name in KUSTOMIZATIONS else f"overlays/{name}"


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, Objects]:
    """Every kustomization rendered: name -> objects."""
    return {name: render(tree / where(name)) for name in (*KUSTOMIZATIONS, *WITH_QUEUE)}


def one(objects: Objects, kind: str) -> dict[str, Any]:
    """The one object of ``kind``."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(objects: Objects) -> dict[str, Any]:
    """The Deployment's RAPL container."""
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# -- the Dockerfile ------------------------------------------------------------------------------


def dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + stripped.removesuffix("\\") if pending else stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def image_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV the image sets (KEY=value forms)."""
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in rest.split():
                name, _, value = item.partition("=")
                env[name] = value
    return env


def image(instructions: list[tuple[str, str]]) -> dict[str, Any]:
    """What the Dockerfile's image runs: base, user, exposed ports, command, environment."""
    last = {word: rest for word, rest in instructions}  # the last of each instruction counts
    user = last.get("USER", "root").split(":")[0]
    return {"from": last["FROM"], "user": int(user) if user.isdigit() else user,
            "expose": {int(port.split("/")[0]) for word, rest in instructions if word == "EXPOSE"
                       for port in rest.split()},
            "cmd": json.loads(last["CMD"]), "entrypoint": last.get("ENTRYPOINT"), "env": image_env(instructions)}


# -- the checks: each returns what is wrong ------------------------------------------------------


def environment(objects: Objects) -> dict[str, str]:
    """The container's environment: its ConfigMaps' data under its own env (secrets: empty)."""
    env: dict[str, str] = {}
    maps = {obj["metadata"]["name"]: obj.get("data", {}) for obj in objects if obj["kind"] == "ConfigMap"}
    spec = container(objects)
    for source in spec.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in spec.get("env", []):
        env[var["name"]] = str(var.get("value", ""))
    return env


def settings_problems(objects: Objects) -> list[str]:
    """Every variable is a RAPL setting (or listed in NOT_SETTINGS), and RAPL accepts their values."""
    problems: list[str] = []
    spec = container(objects)
    maps = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ConfigMap"}
    for source in spec.get("envFrom", []):
        if set(source) != {"configMapRef"} or source["configMapRef"]["name"] not in maps:
            problems.append(f"envFrom {source}: not a ConfigMap of these manifests")
            return problems
    env = environment(objects)
    unknown = sorted(set(env) - set(SPEC) - NOT_SETTINGS)
    if unknown:
        problems.append(f"not RAPL settings (rapl/settings.py SPEC): {unknown}")
    for var in spec.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None and not ref.get("optional"):
            problems.append(f"{var['name']}: the Secret {ref['name']} is required; RAPL runs without it")
    try:
        settings = Settings.load({"ENV_FILE": ""}, environ={k: v for k, v in env.items() if k in SPEC})
    except SettingsError as exc:
        problems.append(f"RAPL refuses the settings: {exc}")
        return problems
    if settings.HOST not in ("0.0.0.0", "::"):
        problems.append(f"HOST={settings.HOST}: other pods could not reach RAPL")
    if settings.PROGRESS:
        problems.append("PROGRESS is on: progress bars in the log")
    cpu = cpus(spec.get("resources", {}).get("limits", {}).get("cpu", "0"))
    if not 1 <= settings.THREADS <= max(cpu, 1):
        problems.append(f"THREADS={settings.THREADS}: use 1 to the CPU limit ({cpu}); 0 takes every core of the node")
    return problems


def cpus(quantity: Any) -> float:
    """A CPU quantity ("4", "500m", 2) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def named_port(spec: dict[str, Any], port: Any) -> int | None:
    """A probe's or Service's port (a number, or the name of one of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in spec.get("ports", []) if p.get("name") == port), None)


def port_problems(objects: Objects, built: dict[str, Any]) -> list[str]:
    """PORT, the container port, both probes, the Service, the scrape annotation and the image agree."""
    try:
        port = int(environment(objects).get("PORT", SPEC["PORT"][0]))
    except ValueError as exc:
        return [f"PORT: {exc}"]
    spec = container(objects)
    problems: list[str] = []
    declared = [p["containerPort"] for p in spec.get("ports", [])]
    if declared != [port]:
        problems.append(f"container ports {declared}, RAPL listens on PORT={port}")
    command = spec.get("readinessProbe", {}).get("exec", {}).get("command", [])
    found = PROBE_ADDRESS.findall(" ".join(command))
    if [int(p) for p in found] != [port]:
        problems.append(f"the readiness probe asks 127.0.0.1 on {found}, RAPL listens on {port}")
    live = spec.get("livenessProbe", {}).get("tcpSocket", {}).get("port")
    if named_port(spec, live) != port:
        problems.append(f"the liveness probe connects to {live!r}, RAPL listens on {port}")
    service = one(objects, "Service")
    for entry in service["spec"]["ports"]:
        if named_port(spec, entry.get("targetPort", entry["port"])) != port:
            problems.append(f"the Service sends to {entry.get('targetPort')!r}, RAPL listens on {port}")
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations and annotations["prometheus.io/port"] != str(port):
        problems.append(f"Prometheus scrapes port {annotations['prometheus.io/port']}, RAPL listens on {port}")
    if built["expose"] != {port}:
        problems.append(f"the image EXPOSEs {built['expose']}, RAPL listens on {port}")
    if built["env"].get("PORT", str(port)) != str(port):
        problems.append(f"the image sets PORT={built['env']['PORT']}, the manifests {port}")
    return problems


def probe_problems(objects: Objects, built: dict[str, Any]) -> list[str]:
    """Readiness reads /health's status with the image's python; liveness is a lenient TCP connect."""
    spec = container(objects)
    problems: list[str] = []
    ready = spec.get("readinessProbe", {})
    command = ready.get("exec", {}).get("command", [])
    if command[:2] != ["python", "-c"] or not built["from"].startswith("python:"):
        problems.append(f"the readiness probe runs {command[:2]}, the image {built['from']}")
    code = command[2] if len(command) > 2 else ""
    if '"/health"' not in code or any(f'"{state}"' not in code for state in READY_STATES):
        problems.append("the readiness probe must read /health and accept " + ", ".join(READY_STATES))
    if ready.get("timeoutSeconds", 1) < 2:
        problems.append("the readiness probe's timeout leaves python no time to start")
    live = spec.get("livenessProbe", {})
    if set(live) & {"exec", "httpGet", "grpc"} or "tcpSocket" not in live:
        problems.append(f"liveness must be a tcpSocket probe (a busy model delays HTTP answers): {sorted(live)}")
    elif live.get("periodSeconds", 10) * live.get("failureThreshold", 3) < 120:
        problems.append("liveness gives up within two minutes")
    return problems


def stop_problems(objects: Objects) -> list[str]:
    """The grace period covers REQUEST_TIMEOUT, the preStop pause and RAPL's own stop."""
    from rapl.http.server import STOP_FLUSH_SECONDS, STOP_GRACE_SECONDS

    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    timeout = int(environment(objects).get("REQUEST_TIMEOUT", SPEC["REQUEST_TIMEOUT"][0]))
    pause = 0
    pre_stop = container(objects).get("lifecycle", {}).get("preStop", {})
    if pre_stop:
        command = pre_stop.get("exec", {}).get("command", [])
        if len(command) != 2 or command[0] != "sleep" or not command[1].isdigit():
            return [f"preStop: {pre_stop}: expected sleep N"]
        pause = int(command[1])
    needed = timeout + pause + STOP_FLUSH_SECONDS + STOP_GRACE_SECONDS
    if grace <= needed:
        return [f"terminationGracePeriodSeconds={grace}: needs more than REQUEST_TIMEOUT={timeout} + "
                f"preStop {pause} + RAPL's stop {STOP_FLUSH_SECONDS + STOP_GRACE_SECONDS} = {needed}"]
    return []


def security_problems(objects: Objects, built: dict[str, Any]) -> list[str]:
    """Non-root with the image's UID, no privileges, read-only root with writable /tmp and caches."""
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    spec = container(objects)
    problems: list[str] = []
    pod_context, context = pod.get("securityContext", {}), spec.get("securityContext", {})
    merged = {**pod_context, **context}
    wanted = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    problems += [f"securityContext {name} is {merged.get(name)!r}, not {value!r}"
                 for name, value in wanted.items() if merged.get(name) is not value]
    if merged.get("runAsUser") in (None, 0) or merged.get("runAsUser") != built["user"]:
        problems.append(f"runAsUser {merged.get('runAsUser')!r}: the image's USER is {built['user']!r}, non-root")
    if context.get("capabilities", {}).get("drop") != ["ALL"] or context.get("capabilities", {}).get("add"):
        problems.append(f"capabilities {context.get('capabilities')}: drop ALL, add none")
    if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"seccompProfile {merged.get('seccompProfile')}: use RuntimeDefault")
    if context.get("privileged"):
        problems.append("privileged")
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {mount["mountPath"]: volumes.get(mount["name"], {}) for mount in spec.get("volumeMounts", [])}
    if "emptyDir" not in mounts.get("/tmp", {}):
        problems.append("no emptyDir on /tmp: the root filesystem is read-only")
    claims = {path for path, volume in mounts.items() if "persistentVolumeClaim" in volume}
    env = environment(objects)
    for name in CACHES:
        if not any(env.get(name, "").startswith(f"{path}/") for path in claims):
            problems.append(f"{name}={env.get(name)!r} is not on the model volume {sorted(claims)}")
    for name in ("HOME", "XDG_CACHE_HOME"):
        if not any(env.get(name, "") == path or env.get(name, "").startswith(f"{path}/") for path in mounts):
            problems.append(f"{name}={env.get(name)!r} is on the read-only root filesystem")
    for claim in (volume["persistentVolumeClaim"]["claimName"] for volume in volumes.values()
                  if "persistentVolumeClaim" in volume):
        if ("PersistentVolumeClaim", claim) not in {key(obj) for obj in objects}:
            problems.append(f"the volume claims {claim}, which these manifests do not make")
    resources = spec.get("resources", {})
    for kind in ("requests", "limits"):
        missing = {"cpu", "memory"} - set(resources.get(kind, {}))
        if missing:
            problems.append(f"resources.{kind} lacks {sorted(missing)}")
    return problems


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A matchLabels selector picks pods with ``labels``."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def wiring_problems(objects: Objects, built: dict[str, Any]) -> list[str]:
    """The Service, PDB and HPA reach the Deployment's pods; the Deployment runs the image's command."""
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    problems: list[str] = []
    if not selects(deployment["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append("the Deployment's selector does not match its own pods")
    service = one(objects, "Service")
    if service["spec"].get("type", "ClusterIP") != "ClusterIP" or not selects(service["spec"].get("selector", {}),
                                                                               labels):
        problems.append(f"the Service {service['spec'].get('selector')} does not select the pods {labels}")
    if [p.get("name") for p in service["spec"]["ports"]] != ["http"]:
        problems.append("the Service's port is not named http")
    pdb = one(objects, "PodDisruptionBudget")
    if not selects(pdb["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append(f"the PodDisruptionBudget {pdb['spec']['selector']} does not select the pods {labels}")
    hpa = one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != ("apps/v1", "Deployment",
                                                                  deployment["metadata"]["name"]):
        problems.append(f"the HorizontalPodAutoscaler scales {target}, not the Deployment")
    if "replicas" in deployment["spec"]:
        problems.append("the Deployment sets replicas: each apply would undo the HorizontalPodAutoscaler's count")
    spec = container(objects)
    if built["entrypoint"] or spec.get("command") or spec.get("args"):
        problems.append("the container's command is not the image's CMD")
    if built["cmd"] != ["python", "-m", "rapl"]:
        problems.append(f"the image runs {built['cmd']}, not python -m rapl")
    if spec["image"].partition(":")[0] != "rapl":
        problems.append(f"the image {spec['image']} is not rapl (the Dockerfile's, README: build)")
    return problems


def problems_of(objects: Objects, built: dict[str, Any]) -> list[str]:
    """Everything the checks find wrong."""
    return [*settings_problems(objects), *port_problems(objects, built), *probe_problems(objects, built),
            *stop_problems(objects), *security_problems(objects, built), *wiring_problems(objects, built)]


# -- the manifests as they are -------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    return image(dockerfile())


@pytest.mark.parametrize("name", [*KUSTOMIZATIONS, *WITH_QUEUE])
def test_manifests_agree_with_rapl(rendered: dict[str, Objects], built: dict[str, Any], name: str) -> None:
    assert problems_of(rendered[name], built) == []
    assert sorted(obj["kind"] for obj in rendered[name]) == sorted(
        ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
         "PodDisruptionBudget"])


def test_kustomize_renders_the_same(tree: Path, rendered: dict[str, Objects]) -> None:
    """The test's renderer gives what the real kustomize gives (where kubectl or kustomize is installed)."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is installed: the test's own renderer alone was used")
    for name, objects in rendered.items():
        done = subprocess.run([*command, str(tree / where(name))], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        real = {key(obj): obj for obj in yaml.safe_load_all(done.stdout) if obj}
        assert real == {key(obj): obj for obj in objects}, name


def test_manifests_validate_against_the_kubernetes_schemas(rendered: dict[str, Objects]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -r tests/requirements.txt)")
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for name, objects in rendered.items():
            for obj in objects:
                try:
                    checked = kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(part) for part in exc.path)
                    pytest.fail(f"{name}: {key(obj)} is invalid for Kubernetes {version}: {path}: {exc.message}")
                assert checked == ".".join(version.split(".")[:2])


def test_gpu_overlay(rendered: dict[str, Objects]) -> None:
    base, gpu = rendered["base"], rendered["overlays/gpu"]
    spec = container(gpu)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container(base)["resources"]["limits"]
    assert Settings.load({"ENV_FILE": ""}, environ=environment(gpu)).DEVICE == "cuda"
    assert Settings.load({"ENV_FILE": ""}, environ=environment(base)).DEVICE == "cpu"
    pod = one(gpu, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nodeSelector" not in one(base, "Deployment")["spec"]["template"]["spec"]
    assert spec["image"] == "rapl:gpu" and container(base)["image"] == "rapl:cpu"
    base_hpa, gpu_hpa = one(base, "HorizontalPodAutoscaler")["spec"], one(gpu, "HorizontalPodAutoscaler")["spec"]
    assert gpu_hpa["maxReplicas"] < base_hpa["maxReplicas"] and gpu_hpa["minReplicas"] <= base_hpa["minReplicas"]
    # The rest of the base is kept: the patches changed only what they name.
    assert spec["readinessProbe"] == container(base)["readinessProbe"]
    assert spec["env"] == container(base)["env"]


def test_queue_depth_component_scales_on_rapls_gauge(rendered: dict[str, Objects]) -> None:
    """The optional HPA's pods metric is the gauge /metrics serves; no kustomization uses it by default."""
    from rapl.http.metrics import Metrics

    for name in WITH_QUEUE:
        metrics = one(rendered[name], "HorizontalPodAutoscaler")["spec"]["metrics"]
        pods = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
        assert pods == ["rapl_queue_depth"], name
        assert any(m["type"] == "Resource" for m in metrics), name  # and CPU still counts
    text = Metrics(queue_depth=lambda: 3).render().decode()
    assert "# TYPE rapl_queue_depth gauge" in text and "\nrapl_queue_depth 3.0\n" in text
    for name in KUSTOMIZATIONS:
        metrics = one(rendered[name], "HorizontalPodAutoscaler")["spec"]["metrics"]
        assert [m["type"] for m in metrics] == ["Resource"], name


def test_allowed_hosts_let_the_service_name_through(rendered: dict[str, Objects]) -> None:
    """Clients in the cluster send Host: rapl:8000 (or the full name); RAPL answers them, not 421."""
    from rapl import create_app

    env = environment(rendered["base"])
    settings = {k: v for k, v in env.items() if k in SPEC and k != "API_KEY"}
    app = create_app({"ENV_FILE": "", **settings}, backend=FakeBackend())
    service = one(rendered["base"], "Service")
    port = service["spec"]["ports"][0]["port"]
    name = service["metadata"]["name"]
    client = app.test_client()
    for host in (name, f"{name}.default", f"{name}.default.svc.cluster.local", "10.1.2.3"):
        assert client.get("/health", headers={"Host": f"{host}:{port}"}).status_code != 421, host
    assert client.get("/health", headers={"Host": f"elsewhere.example:{port}"}).status_code == 421


def test_dockerfile(built: dict[str, Any]) -> None:
    assert built["from"].startswith("python:3.") and built["user"] == 10001
    assert built["env"]["HOST"] == "0.0.0.0" and built["env"]["ENV_FILE"] == ""
    copied = [rest.split()[0] for word, rest in dockerfile() if word == "COPY"]
    assert set(copied) == {"requirements.txt", "rapl/", "wsgi.py"}
    for path in copied:
        assert (ROOT / path).exists(), path  # the build context is the repository root
    ignore = (KUBE / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{path}" in ignore for path in copied)


# -- broken copies must fail ---------------------------------------------------------------------


def _configmap(objects: Objects) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def _rename_setting(objects: Objects) -> None:
    _configmap(objects)["REQUEST_TIMEOUTS"] = _configmap(objects).pop("REQUEST_TIMEOUT")


def _readiness_port(objects: Objects) -> None:
    command = container(objects)["readinessProbe"]["exec"]["command"]
    command[2] = command[2].replace('"127.0.0.1", 8000', '"127.0.0.1", 8001')


def _service_target(objects: Objects) -> None:
    one(objects, "Service")["spec"]["ports"][0]["targetPort"] = 8080


def _pod(objects: Objects) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


BREAKAGES: dict[str, tuple[Callable[[Objects], Any], str]] = {
    "an unknown setting": (_rename_setting, "not RAPL settings"),
    "a value RAPL refuses": (lambda o: _configmap(o).update(DEVICE="gpu"), "RAPL refuses"),
    "a cache variable misspelt": (lambda o: container(o)["env"].append({"name": "HF_HOM", "value": "/models/x"}),
                                  "not RAPL settings"),
    "PORT changed alone": (lambda o: _configmap(o).update(PORT="9000"), "RAPL listens on PORT=9000"),
    "readiness on the wrong port": (_readiness_port, "the readiness probe asks"),
    "liveness on the wrong port": (lambda o: container(o)["livenessProbe"]["tcpSocket"].update(port=8080),
                                   "the liveness probe"),
    "liveness over HTTP": (lambda o: container(o)["livenessProbe"].update(httpGet={"path": "/health", "port": 8000}),
                           "tcpSocket"),
    "readiness that accepts loading": (lambda o: container(o)["readinessProbe"]["exec"]["command"].__setitem__(
        2, "import sys; sys.exit(0)"), "/health"),
    "the Service on another port": (_service_target, "the Service sends to"),
    "a short grace period": (lambda o: _pod(o).update(terminationGracePeriodSeconds=300), "GracePeriod"),
    "a longer REQUEST_TIMEOUT": (lambda o: _configmap(o).update(REQUEST_TIMEOUT="600"), "GracePeriod"),
    "root": (lambda o: container(o)["securityContext"].update(runAsUser=0), "runAsUser"),
    "a writable root": (lambda o: container(o)["securityContext"].update(readOnlyRootFilesystem=False),
                        "readOnlyRootFilesystem"),
    "capabilities kept": (lambda o: container(o)["securityContext"].pop("capabilities"), "capabilities"),
    "no /tmp": (lambda o: container(o)["volumeMounts"].pop(), "/tmp"),
    "the HPA on another Deployment": (lambda o: one(o, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(
        name="rapl-server"), "scales"),
    "the PDB on other pods": (lambda o: one(o, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/name": "other"}), "PodDisruptionBudget"),
    "the Service on other pods": (lambda o: one(o, "Service")["spec"]["selector"].update(app="other"), "Service"),
    "THREADS over the limit": (lambda o: _configmap(o).update(THREADS="0"), "THREADS=0"),
    "a required Secret": (lambda o: container(o)["env"][0]["valueFrom"]["secretKeyRef"].pop("optional"), "Secret"),
    "replicas fixed": (lambda o: one(o, "Deployment")["spec"].update(replicas=3), "replicas"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_checks_catch_broken_manifests(rendered: dict[str, Objects], built: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(rendered["base"])
    mutate, expected = BREAKAGES[breakage]
    mutate(broken)
    found = problems_of(broken, built)
    assert any(expected in problem for problem in found), found


def test_schema_check_catches_a_misspelt_field(rendered: dict[str, Objects]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    broken = copy.deepcopy(one(rendered["base"], "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_checks_catch_a_broken_dockerfile(rendered: dict[str, Objects], tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    for old, new, expected in [("USER 10001:10001", "USER 0", "runAsUser"), ("EXPOSE 8000", "EXPOSE 8080", "EXPOSE"),
                               ('CMD ["python", "-m", "rapl"]', 'CMD ["waitress-serve", "wsgi:app"]', "python -m rapl"),
                               ("PORT=8000", "PORT=8080", "the image sets PORT")]:
        assert old in text
        broken = tmp_path / "Dockerfile"
        broken.write_text(text.replace(old, new))
        found = problems_of(rendered["base"], image(dockerfile(broken)))
        assert any(expected in problem for problem in found), (new, found)


# -- the probes against a real RAPL -----------------------------------------------------------------


def readiness(objects: Objects, port: int) -> subprocess.CompletedProcess[str]:
    """Run the readiness probe's command as the kubelet would, against RAPL on 127.0.0.1:``port``."""
    probe = container(objects)["readinessProbe"]
    command = probe["exec"]["command"]
    code = PROBE_ADDRESS.sub(f'HTTPConnection("127.0.0.1", {port}', command[2])
    return subprocess.run([sys.executable, *command[1:2], code, *command[3:]], capture_output=True, text=True,
                          timeout=probe["timeoutSeconds"] + 10)


def liveness(objects: Objects, port: int) -> bool:
    """The liveness probe: a TCP connection to the port."""
    timeout = container(objects)["livenessProbe"]["timeoutSeconds"]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def test_readiness_fails_with_nothing_listening(rendered: dict[str, Objects]) -> None:
    port = free_port()
    assert readiness(rendered["base"], port).returncode != 0
    assert not liveness(rendered["base"], port)


def port_of(server: Any) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.slow
def test_readiness_waits_for_the_model(fake_serve, rendered: dict[str, Objects]) -> None:  # noqa: ANN001
    """Not ready while the model loads (yet alive: the port is open), ready once it is loaded."""
    server = fake_serve(FakeBackend(load_delay=3.0), wait=False)
    port = port_of(server)
    wait_until(lambda: server.backend.loads, what="the load to begin")
    loading = readiness(rendered["base"], port)
    assert server.worker.state == "loading"
    assert loading.returncode != 0 and "model loading" in loading.stderr, loading
    assert liveness(rendered["base"], port)
    assert server.wait_loaded(timeout=30) == "ready"
    ready = readiness(rendered["base"], port)
    assert ready.returncode == 0, ready


@pytest.mark.slow
def test_readiness_fails_after_a_failed_load(fake_serve, rendered: dict[str, Objects]) -> None:  # noqa: ANN001
    server = fake_serve(FakeBackend("rapl-test/no-such-model", fail_load=OSError("Connection failed")))
    assert server.worker.state == "failed"
    failed = readiness(rendered["base"], port_of(server))
    assert failed.returncode != 0 and "model failed" in failed.stderr, failed


@pytest.mark.slow
def test_an_idle_unloaded_model_counts_as_ready(fake_serve, rendered: dict[str, Objects]) -> None:  # noqa: ANN001
    server = fake_serve(FakeBackend(), MODEL_IDLE_UNLOAD="1")
    wait_until(lambda: server.worker.state == "unloaded", timeout=15, what="the idle unload")
    assert readiness(rendered["base"], port_of(server)).returncode == 0


@pytest.mark.slow
def test_a_long_transcription_fails_neither_probe(fake_serve, rendered: dict[str, Objects]) -> None:  # noqa: ANN001
    """While the model is busy (a transcription held at the fake's gate), both probes still pass."""
    gate = threading.Event()
    server = fake_serve(FakeBackend(gate=gate))
    port = port_of(server)
    answers: list[httpx.Response] = []

    def transcribe() -> None:
        with server.http() as http:
            answers.append(http.post("/v1/audio/transcriptions", files={"file": ("clip.wav", wav_bytes(tone(2.0)))}))

    thread = threading.Thread(target=transcribe)
    thread.start()
    try:
        wait_until(lambda: server.worker.running, what="the transcription to start")
        started = time.monotonic()
        assert liveness(rendered["base"], port)
        busy = readiness(rendered["base"], port)
        assert busy.returncode == 0, busy
        assert time.monotonic() - started < container(rendered["base"])["readinessProbe"]["timeoutSeconds"]
        assert server.worker.running  # still busy: the probes did not wait for it
    finally:
        gate.set()
        thread.join(timeout=30)
    assert [r.status_code for r in answers] == [200]

