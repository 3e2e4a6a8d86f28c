"""Issue 6: the deploy recipes, checked against the installed software.

Every ``dask scheduler``/``dask worker`` line is parsed by the ``dask`` command's own click
commands and every ``gradjob`` line by gradjob's CLI, so an option that does not exist fails here.
The cron line and the Slurm batch script run for real (bash, a fresh copy of the checkout, the
installed gradjob, a real local Dask cluster); the systemd units go through ``systemd-analyze``
where it is installed; the Kubernetes manifests through ``kubectl kustomize`` and kubectl's own
argument parser where kubectl is installed. Docker, Kubernetes and Slurm themselves do not run
here: the compose file, the Dockerfile and the manifests are checked as files.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import dask.config
import psutil
import pytest
import typer
import yaml
from distributed.utils import get_ip_interface

from gradjob.cli.app import app
from gradjob.executors.cluster import EMBEDDED_CLUSTER_CONFIG

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMMAND = ["gradjob", "submit", "jobs/nightly.toml"]   # what every recipe runs
WORKER_SETTINGS = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"}
NOBODY = 65534   # uid and gid of `nobody`/`nogroup` in the Debian-based python:3.11-slim image
GRADJOB = str(Path(sys.executable).with_name("gradjob"))
OPERATOR_SCHEDULER_ADDRESS = "tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786"  # the operator's


# ---------------------------------------------------------------------------------------------
# Reading the recipes


def yaml_documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict:
    return yaml_documents(DEPLOY / "compose/docker-compose.yml")[0]


def kube_objects() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml_documents(path)]


def kube(kind: str) -> list[dict]:
    return [obj for obj in kube_objects() if obj["kind"] == kind]


def daskjob() -> dict:
    (job,) = kube("DaskJob")
    return job


def kube_pod_specs() -> dict[str, dict]:
    job = daskjob()["spec"]
    (cronjob,) = kube("CronJob")
    return {"job": job["job"]["spec"], "worker": job["cluster"]["spec"]["worker"]["spec"],
            "scheduler": job["cluster"]["spec"]["scheduler"]["spec"],
            "launcher": cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]}


def container(pod: dict, name: str | None = None, init: bool = False) -> dict:
    found = [c for c in pod["initContainers" if init else "containers"] if name is None or c["name"] == name]
    assert len(found) == 1, (name, pod)
    return found[0]


def argv(cont: dict) -> list[str]:
    return [str(a) for a in cont.get("command", []) + cont.get("args", [])]


def env(cont: dict) -> dict[str, str]:
    return {item["name"]: str(item["value"]) for item in cont.get("env", [])}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def cron_command() -> str:
    lines = [line for line in (DEPLOY / "cron/crontab").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 5)
    assert fields[:5] == ["30", "2", "*", "*", "*"], fields
    return fields[5]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/compose/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "compose/Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def nightly_paths() -> dict[str, str]:
    """The folders (relative to the working directory) jobs/nightly.toml writes into."""
    job = tomllib.loads((ROOT / "jobs/nightly.toml").read_text())
    reports = {Path(p).parts[0] for p in job["reports"].values()}
    assert len(reports) == 1, reports
    return {"stores": Path(job["job"]["store_root"]).parts[0], "reports": reports.pop()}


def readme_code_lines(program: str) -> list[list[str]]:
    """Command lines of `program` in deploy/README.md's indented code blocks."""
    lines = [line.strip() for line in (DEPLOY / "README.md").read_text().splitlines() if line.startswith("    ")]
    return [shlex.split(line, comments=True) for line in lines if line.startswith(program + " ")]


# ---------------------------------------------------------------------------------------------
# The installed command-line parsers


def parse_gradjob(args: list[str]):
    """Parse a gradjob command line with gradjob's own CLI; raises on an unknown option."""
    assert args[0] == "gradjob", args
    group = typer.main.get_command(app)
    parent = group.make_context("gradjob", list(args[1:2]))
    command = group.get_command(parent, args[1])
    assert command is not None, f"gradjob has no command {args[1]!r}"
    return command.make_context(args[1], list(args[2:]), parent=parent)


def parse_dask(args: list[str]):
    """Parse a `dask scheduler`/`dask worker` line with the installed distributed's click command,
    found as `dask` finds it (the dask_cli entry points); raises on an unknown option or program."""
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert args[0] in scripts, f"{args[0]!r} is not an installed command (there is `dask`: {'dask' in scripts})"
    assert args[0] == "dask" and len(args) > 1, args
    (entry,) = importlib.metadata.entry_points(group="dask_cli", name=args[1]) or [None]
    assert entry is not None, f"`dask {args[1]}` does not exist"
    context = entry.load().make_context(f"dask {args[1]}", list(args[2:]))
    if args[1] == "worker":
        # dask worker ignores unknown options, so one lands in its SCHEDULER argument: refuse that
        scheduler = context.params["scheduler"]
        assert scheduler is None or re.fullmatch(r"(tcp|tls)://[\w.-]+:\d+", scheduler), f"unknown option {scheduler!r}"
    return context


def gradjob_command_lines() -> dict[str, list[str]]:
    service = unit("gradjob-nightly.service")["Service"]
    cron = cron_command()
    (cron_gradjob,) = [part for part in cron.split("&&") if "gradjob submit" in part]
    sbatch = [shlex.split(line) for line in (DEPLOY / "slurm/nightly.sbatch").read_text().splitlines()
              if line.startswith("gradjob ")]
    assert len(sbatch) == 1, sbatch
    lines = {
        "systemd": shlex.split(service["ExecStart"]),
        "cron": shlex.split(cron_gradjob.split(">>")[0]),
        "compose": compose()["services"]["job"]["command"],
        "kubernetes": argv(container(kube_pod_specs()["job"], "job")),
        "slurm": sbatch[0],
    }
    for recipe in ("systemd", "cron"):   # the installed script, by its absolute path
        assert lines[recipe][0] == "/opt/gradjob/.venv/bin/gradjob", lines[recipe]
        lines[recipe] = ["gradjob"] + lines[recipe][1:]
    return lines


def dask_command_lines() -> dict[str, list[str]]:
    services = compose()["services"]
    pods = kube_pod_specs()
    return {
        "compose scheduler": services["scheduler"]["command"],
        "compose worker": services["worker"]["command"],
        "kubernetes scheduler": argv(container(pods["scheduler"], "scheduler")),
        "kubernetes worker": argv(container(pods["worker"], "worker")),
    }


def slurm_cluster_module():
    spec = importlib.util.spec_from_file_location("slurm_cluster", DEPLOY / "slurm/slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Every file parses; every command line parses with the software that will run it


def test_every_file_parses():
    kinds = set()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        if path.suffix in (".yml", ".yaml"):
            assert yaml_documents(path), path
        elif path.suffix in (".service", ".timer"):
            assert unit(path.name).sections(), path
        elif path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
        elif path.suffix in (".sbatch", ".sh"):
            run = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
        elif path.name == "Dockerfile":
            assert {op for op, _ in dockerfile()} <= {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER"}
        kinds.add(path.suffix or path.name)
    assert kinds == {".yml", ".yaml", ".service", ".timer", ".py", ".sbatch", ".sh", "Dockerfile", ".md", "crontab"}


def test_every_gradjob_command_line_parses_with_gradjobs_cli(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    lines = gradjob_command_lines()
    # every recipe runs the same command; the cluster comes from DASK_SCHEDULER_ADDRESS (compose,
    # Kubernetes, Slurm) or is gradjob's embedded one on 127.0.0.1 (systemd, cron)
    assert lines == dict.fromkeys(["systemd", "cron", "compose", "kubernetes", "slurm"], COMMAND)
    readme = readme_code_lines("gradjob")
    assert COMMAND in readme
    for args in list(lines.values()) + readme:
        context = parse_gradjob(args)
        assert context.params["job_file"] == "jobs/nightly.toml" or args[1] != "submit", args
    with pytest.raises(Exception, match="No such option"):   # the parser is strict
        parse_gradjob(COMMAND + ["--no-such-option"])


def test_every_dask_command_line_parses_with_the_installed_distributed():
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file())
    assert not re.search(r"dask-(worker|scheduler)\b", text), "dask-worker/dask-scheduler no longer exist: dask worker"
    lines = dask_command_lines()
    for name, args in list(lines.items()) + [(f"README {a}", a) for a in readme_code_lines("dask")]:
        context = parse_dask(args)
        if args[1] == "worker":   # one thread per worker, as deploy/README.md explains
            assert context.params["nthreads"] == 1, name
    assert parse_dask(lines["compose worker"]).params["scheduler"] == "tcp://scheduler:8786"
    assert parse_dask(lines["kubernetes worker"]).params["scheduler"] is None   # the operator's DASK_SCHEDULER_ADDRESS
    for wrong, error in ((["dask-worker", "--nthreads", "1"], "'dask-worker' is not an installed command"),
                         (["dask", "worker", "--nthreads", "1", "--no-such-option"], "unknown option '--no-such-option'"),
                         (["dask", "worker", "--nthreads", "one"], "'one' is not a valid integer"),
                         (["dask", "scheduler", "--no-such-option"], "No such option")):
        with pytest.raises(Exception, match=error):
            parse_dask(wrong)


def test_every_recipe_that_starts_workers_sets_gradjobs_worker_settings():
    """Profiler off, 1 s tick (EMBEDDED_CLUSTER_CONFIG), read as Dask reads its environment."""
    def settings(variables: dict[str, str]) -> dict:
        config = dask.config.collect_env(variables)
        return {key: dask.config.get(key, None, config=config) for key in EMBEDDED_CLUSTER_CONFIG}

    services = compose()["services"]
    slurm = slurm_cluster_module()
    prologue = dict(line.removeprefix("export ").split("=", 1)
                    for line in slurm.options({"GRADJOB_INTERFACE": "lo"})["job_script_prologue"])
    workers = {
        "compose": services["worker"]["environment"],
        "kubernetes": env(container(kube_pod_specs()["worker"], "worker")),
        "slurm": prologue,
    }
    for recipe, variables in workers.items():
        assert WORKER_SETTINGS <= set(variables), recipe
        assert settings(variables) == EMBEDDED_CLUSTER_CONFIG, recipe
    options = slurm.options({"GRADJOB_INTERFACE": "lo"})
    assert (options["cores"], options["processes"]) == (1, 1)   # one single-threaded worker per job
    # the schedulers get the tick too; the one-host recipes start no workers but gradjob's own
    assert settings(services["scheduler"]["environment"])["distributed.admin.tick.interval"] == "1s"
    assert "export DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s" in (DEPLOY / "slurm/nightly.sbatch").read_text()
    assert "Environment" not in unit("gradjob-nightly.service")["Service"]


# ---------------------------------------------------------------------------------------------
# Security: no scheduler on a public interface, in any recipe


def test_no_scheduler_on_a_public_interface(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    # systemd and cron: gradjob's embedded cluster, which binds 127.0.0.1
    for recipe in ("systemd", "cron"):
        assert parse_gradjob(gradjob_command_lines()[recipe]).params["scheduler"] is None, recipe
    assert "DASK_SCHEDULER_ADDRESS" not in cron_command()
    # compose: an internal network, no published port, no host network
    spec = compose()
    assert spec["networks"]["gradjob"] == {"internal": True}
    for name, service in spec["services"].items():
        assert "ports" not in service and "network_mode" not in service, name
        assert service["networks"] == ["gradjob"], name
    # Kubernetes: the scheduler's service is ClusterIP; nothing on the nodes' network
    assert daskjob()["spec"]["cluster"]["spec"]["scheduler"]["service"]["type"] == "ClusterIP"
    assert not kube("Service") and not kube("Ingress")
    for name, pod in kube_pod_specs().items():
        assert not pod.get("hostNetwork"), name
        for cont in pod["containers"] + pod.get("initContainers", []):
            assert all("hostPort" not in port for port in cont.get("ports", [])), name
    # Slurm: the scheduler and its dashboard bind the private interface named by GRADJOB_INTERFACE
    slurm = slurm_cluster_module()
    options = slurm.options({"GRADJOB_INTERFACE": "lo"})
    assert options["interface"] == "lo"
    assert options["scheduler_options"] == {"interface": "lo", "dashboard_address": "127.0.0.1:8787"}
    if "ib0" not in psutil.net_if_addrs():
        with pytest.raises(ValueError, match="'ib0' is not a valid network interface"):
            slurm.options({})   # the default: ib0, the InfiniBand interconnect


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_kubernetes_volumes_are_defined_and_read_write_many():
    claims = {(obj["metadata"]["namespace"], obj["metadata"]["name"]): obj for obj in kube("PersistentVolumeClaim")}
    namespace = daskjob()["metadata"]["namespace"]
    assert kube("Namespace")[0]["metadata"]["name"] == namespace
    mounted = {}
    for name, pod in kube_pod_specs().items():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for cont in pod["containers"] + pod.get("initContainers", []):
            for mount in cont.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert (namespace, claim) in claims, f"{name} mounts {claim}, which no manifest defines"
                    assert claims[namespace, claim]["spec"]["accessModes"] == ["ReadWriteMany"], claim
                    mounted.setdefault(claim, set()).add((name, mount["mountPath"]))
    workdir = dict(dockerfile())["WORKDIR"]
    paths = nightly_paths()
    # the runner and every worker write the stores at the same path, where the job puts them
    assert mounted == {"gradjob-stores": {("job", f"{workdir}/{paths['stores']}"), ("worker", f"{workdir}/{paths['stores']}")},
                       "gradjob-reports": {("job", f"{workdir}/{paths['reports']}")}}
    assert set(claims) == {(namespace, claim) for claim in mounted}


def test_kubernetes_daskjob_is_consistent():
    job = daskjob()
    assert (job["apiVersion"], job["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    pods = kube_pod_specs()
    runner, init = container(pods["job"], "job"), container(pods["job"], "wait-for-cluster", init=True)
    worker, scheduler = container(pods["worker"], "worker"), container(pods["scheduler"], "scheduler")
    # one image: the workers import gradjob, and the scheduler unpickles what the job sends
    assert len({c["image"] for c in (runner, init, worker, scheduler)}) == 1
    workdir = dict(dockerfile())["WORKDIR"]
    assert runner["workingDir"] == worker["workingDir"] == workdir
    # the operator gives runner and workers DASK_SCHEDULER_ADDRESS; only the init container, which
    # it leaves alone, sets it, to the address the operator uses
    assert "DASK_SCHEDULER_ADDRESS" not in env(runner) and "DASK_SCHEDULER_ADDRESS" not in env(worker)
    assert env(init) == {"DASK_SCHEDULER_ADDRESS": OPERATOR_SCHEDULER_ADDRESS.format(name=name, namespace=namespace)}
    service = job["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
    assert parse_dask(argv(scheduler)).params["port"] is None   # the default port, 8786
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports["tcp-comm"] == 8786 and {p["port"] for p in service["ports"] if p["name"] == "tcp-comm"} == {8786}
    # a verdict is not a crash: never restarted; SIGTERM gets a grace period to stop cleanly
    assert pods["job"]["restartPolicy"] == "Never"
    assert pods["job"]["terminationGracePeriodSeconds"] >= 30
    assert pods["job"]["activeDeadlineSeconds"] == 6 * 3600
    # the image runs as nobody; the pods writing volumes make them theirs with fsGroup
    assert ("USER", "nobody") in dockerfile()
    for pod in (pods["job"], pods["worker"]):
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"], context["runAsNonRoot"]) == (NOBODY, NOBODY, NOBODY, True)


def test_kubernetes_launcher_creates_the_daskjob_every_night():
    kustomization = yaml_documents(DEPLOY / "kubernetes/kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == ["cronjob.yaml", "storage.yaml"]   # not daskjob.yaml: that runs it
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["daskjob.yaml"] and kustomization["generatorOptions"]["disableNameSuffixHash"]
    job = daskjob()
    (cronjob,) = kube("CronJob")
    launcher = kube_pod_specs()["launcher"]
    assert cronjob["spec"]["schedule"] == "30 2 * * *" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    volume = {v["name"]: v for v in launcher["volumes"]}
    render, create = container(launcher, "render", init=True), container(launcher)
    (template, tonight) = render["volumeMounts"]
    assert volume[template["name"]]["configMap"]["name"] == generator["name"]
    assert volume[tonight["name"]] == {"name": tonight["name"], "emptyDir": {}}
    (mount,) = create["volumeMounts"]
    assert mount == {**tonight, "readOnly": True}
    assert argv(create) == ["create", f"--filename={mount['mountPath']}/daskjob.yaml"]
    delete = container(launcher, "delete-last-night", init=True)
    assert argv(delete)[:3] == ["delete", "daskjob", job["metadata"]["name"]]
    assert f"--namespace={job['metadata']['namespace']}" in argv(delete) and "--ignore-not-found=true" in argv(delete)
    (binding,) = kube("RoleBinding")
    (role,) = kube("Role")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": launcher["serviceAccountName"],
                                    "namespace": job["metadata"]["namespace"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["kubernetes.dask.org"] and rule["resources"] == ["daskjobs"]
    assert {"create", "delete", "get"} <= set(rule["verbs"])


def test_kubernetes_wait_for_cluster_command_runs(cluster_address):
    """The init container's command, for real, against a running scheduler with workers."""
    init = container(kube_pod_specs()["job"], "wait-for-cluster", init=True)
    args = argv(init)
    assert args[0] == "python"
    run = subprocess.run([sys.executable] + args[1:], env={**os.environ, "DASK_SCHEDULER_ADDRESS": cluster_address},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_kubernetes_objects_match_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed: objects not "
                             "checked against Kubernetes' own schemas")
    objects = [obj for obj in kube_objects() if obj["kind"] != "DaskJob"]
    # the DaskJob holds plain PodSpecs and a ServiceSpec, which the operator copies into its objects
    job = daskjob()
    for name, pod in kube_pod_specs().items():
        if name != "launcher":
            objects.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod})
    objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "scheduler"},
                    "spec": job["spec"]["cluster"]["spec"]["scheduler"]["service"]})
    for obj in objects:
        kv.validate(obj, kv.latest_version(), strict=True)   # strict: an unknown field is an error


def test_kubernetes_manifests_with_kubectl(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize and kubectl's argument parsing not checked")
    built = subprocess.run([kubectl, "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = list(yaml.safe_load_all(built.stdout))
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "CronJob", "Namespace", "PersistentVolumeClaim",
                                                  "PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"]
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["metadata"] == {"name": "gradjob-daskjob", "namespace": "gradjob"}
    assert configmap["data"] == {"daskjob.yaml": (DEPLOY / "kubernetes/daskjob.yaml").read_text()}
    # the launcher's kubectl lines get past kubectl's parser (then fail: no API server here)
    launcher = kube_pod_specs()["launcher"]
    for args in (argv(container(launcher, "delete-last-night", init=True)), argv(container(launcher)),
                 ["delete", "daskjob", "x", "--no-such-flag"]):
        args = [a.replace("/run/gradjob/daskjob.yaml", str(DEPLOY / "kubernetes/daskjob.yaml")) for a in args]
        run = subprocess.run([kubectl, "--server=http://127.0.0.1:9", "--request-timeout=5s", *args],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no-kubeconfig")})
        assert run.returncode != 0
        if "--no-such-flag" in args:
            assert "unknown flag: --no-such-flag" in run.stderr
        else:
            assert "unknown" not in run.stderr and "127.0.0.1:9" in run.stderr, run.stderr


def test_kubernetes_claims_name_a_storage_class():
    classes = {obj["metadata"]["name"]: obj["spec"].get("storageClassName") for obj in kube("PersistentVolumeClaim")}
    assert classes == {"gradjob-stores": "nfs-client", "gradjob-reports": "nfs-client"}


def test_kubernetes_image_is_named_once_in_the_kustomization(tmp_path):
    """Editing images: in kustomization.yaml alone puts your image in every gradjob container,
    tonight's DaskJob's included: kustomize for real, then the render container's command for real."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization is not built")
    manifests = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY / "kubernetes", manifests)
    kustomization = manifests / "kustomization.yaml"
    text = kustomization.read_text()
    for old, new in (("newName: registry.example.com/gradjob ", "newName: ghcr.io/team/gradjob "),
                     ("newTag: latest", "newTag: v7")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    kustomization.write_text(text)
    built = subprocess.run([kubectl, "kustomize", str(manifests)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = {o["kind"]: o for o in yaml.safe_load_all(built.stdout)}
    launcher = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    render = container(launcher, "render", init=True)
    assert render["image"] == env(render)["GRADJOB_IMAGE"] == "ghcr.io/team/gradjob:v7"
    (template, tonight) = render["volumeMounts"]
    (tmp_path / template["mountPath"].lstrip("/")).mkdir(parents=True)
    source = objects["ConfigMap"]["data"]["daskjob.yaml"]
    (tmp_path / template["mountPath"].lstrip("/") / "daskjob.yaml").write_text(source)
    (tmp_path / tonight["mountPath"].lstrip("/")).mkdir(parents=True)
    args = argv(render)
    assert args[:2] == ["python", "-c"]
    code = args[2]
    for mount in (template, tonight):
        code = code.replace(mount["mountPath"] + "/", str(tmp_path / mount["mountPath"].lstrip("/")) + "/")
    run = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env(render)},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    (job,) = yaml.safe_load_all((tmp_path / tonight["mountPath"].lstrip("/") / "daskjob.yaml").read_text())
    spec = job["spec"]
    cluster = spec["cluster"]["spec"]
    pods = [spec["job"]["spec"], cluster["worker"]["spec"], cluster["scheduler"]["spec"]]
    images = [c["image"] for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]
    assert images == ["ghcr.io/team/gradjob:v7"] * 4
    assert {k: v for k, v in job.items() if k != "spec"} == {k: v for k, v in daskjob().items() if k != "spec"}


# ---------------------------------------------------------------------------------------------
# docker compose


def test_compose_volumes_are_created_and_owned_by_the_images_user():
    instructions = dockerfile()
    users = [i for i, (op, _) in enumerate(instructions) if op == "USER"]
    assert len(users) == 1
    user = instructions[users[0]][1]
    assert user == "nobody"
    workdir, owned, made = "/", {}, set()
    for op, args in instructions[:users[0]]:   # what the image's build does before switching user
        if op == "WORKDIR":
            workdir = args
        elif op == "RUN":
            for part in re.split(r"&&|;", args):
                words = shlex.split(part)
                paths = [str(Path(workdir, w)) for w in words[1:] if not w.startswith("-")]
                if words[:1] == ["mkdir"]:
                    made.update(paths)
                elif words[:1] == ["chown"]:
                    owner = [w for w in words[1:] if not w.startswith("-")][0]
                    owned.update(dict.fromkeys(paths[1:], owner.split(":")[0]))
    spec = compose()
    paths = nightly_paths()
    mounts = {}
    for name, service in spec["services"].items():
        assert service["build"] == {"context": "../..", "dockerfile": "deploy/compose/Dockerfile"}, name
        for volume in service.get("volumes", []):
            source, target = volume.split(":")
            # a named volume: Docker fills it from the image (ownership included) on first use; a
            # bind mount would keep the host folder's owner (root when Docker creates it)
            assert source in spec["volumes"], f"{name}: {source} is not a named volume"
            assert target in made, f"{name}: the image does not create {target}"
            assert owned.get(target) == user, f"{name}: {target} is not owned by {user}"
            mounts.setdefault(source, set()).add((name, target))
    assert mounts == {"stores": {("worker", f"{workdir}/{paths['stores']}"), ("job", f"{workdir}/{paths['stores']}")},
                      "reports": {("job", f"{workdir}/{paths['reports']}")}}
    assert spec["services"]["job"]["environment"] == {"DASK_SCHEDULER_ADDRESS": "tcp://scheduler:8786"}
    assert spec["services"]["job"]["stop_grace_period"] == "1m"   # time for gradjob's clean SIGTERM stop


COMPOSE_V1_TOP_LEVEL = {"version", "services", "volumes", "networks", "secrets", "configs"}   # docker-compose 1.29


def test_compose_file_is_valid_for_compose_v1_and_v2():
    """No top-level key compose v1 rejects (`name:` is v2's only); each installed compose accepts it."""
    assert {key for key in compose() if not key.startswith("x-")} <= COMPOSE_V1_TOP_LEVEL
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose -p gradjob -f deploy/compose/docker-compose.yml up --build --exit-code-from job" in readme
    commands = {"v1": ["docker-compose"], "v2": ["docker", "compose"]}
    ran = []
    for version, command in commands.items():
        if shutil.which(command[0]) is None or subprocess.run([*command, "version"], capture_output=True).returncode:
            continue
        check = subprocess.run([*command, "-p", "gradjob", "-f", str(DEPLOY / "compose/docker-compose.yml"),
                                "config", "-q"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, (version, check.stderr)
        ran.append(version)
    if not ran:
        pytest.skip("neither docker-compose (v1) nor docker compose (v2) is installed: "
                    "the file was checked as YAML only")


# ---------------------------------------------------------------------------------------------
# systemd


def test_systemd_units_have_what_systemd_needs():
    service, timer = unit("gradjob-nightly.service"), unit("gradjob-nightly.timer")
    assert service.sections() == ["Unit", "Service"] and timer.sections() == ["Unit", "Timer", "Install"]
    s = service["Service"]
    assert s["Type"] == "oneshot" and s["User"] == "gradjob" and s["WorkingDirectory"] == "/opt/gradjob"
    assert s["TimeoutStartSec"] == "6h"
    # stop: SIGTERM to gradjob alone, which stops cleanly (exit 143) and shuts its workers down
    assert (s["KillSignal"], s["KillMode"], s["TimeoutStopSec"]) == ("SIGTERM", "mixed", "2min")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 02:30:00" and timer["Timer"]["Persistent"] == "true"
    assert "Unit" not in timer["Timer"]   # the timer starts gradjob-nightly.service, by its name
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: `systemd-analyze verify` of the units not run")
    for name in ("gradjob-nightly.service", "gradjob-nightly.timer"):
        text = (DEPLOY / "systemd" / name).read_text()
        # verify against this machine: the installed gradjob, an existing folder and user
        text = text.replace("/opt/gradjob/.venv/bin/gradjob", GRADJOB).replace("/opt/gradjob", str(tmp_path))
        (tmp_path / name).write_text(text.replace("User=gradjob", "User=root"))
    run = subprocess.run([analyze, "verify", str(tmp_path / "gradjob-nightly.service"), str(tmp_path / "gradjob-nightly.timer")],
                         capture_output=True, text=True, timeout=120)
    problems = [line for line in run.stderr.splitlines() if "gradjob-nightly" in line]
    assert run.returncode == 0 and not problems, run.stderr
    calendar = subprocess.run([analyze, "calendar", unit("gradjob-nightly.timer")["Timer"]["OnCalendar"]],
                              capture_output=True, text=True, timeout=60)
    assert calendar.returncode == 0 and "Normalized form: *-*-* 02:30:00" in calendar.stdout, calendar.stdout


# ---------------------------------------------------------------------------------------------
# cron, for real


def fresh_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(
        ".git", ".venv", "gradjob-stores", "reports", "__pycache__", "*.egg-info", ".pytest_cache", "*.zarr"))
    assert not (checkout / "reports").exists()
    return checkout


def test_cron_line_runs_in_a_fresh_checkout(tmp_path):
    command = cron_command()
    assert "%" not in command   # cron turns % into a newline
    checkout = fresh_checkout(tmp_path)

    def cron(job: str) -> int:
        line = command
        for old, new in (("/opt/gradjob/.venv/bin/gradjob", GRADJOB), ("/opt/gradjob", str(checkout)),
                         ("jobs/nightly.toml", job)):
            assert line.count(old) == 1, (old, line)
            line = line.replace(old, new)
        cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHELL": "/bin/sh", "LOGNAME": "gradjob"}
        return subprocess.run(["/bin/sh", "-c", line], env=cron_env, cwd=tmp_path, timeout=120).returncode

    assert cron("jobs/seed-corrected.toml") == 0
    log = (checkout / "reports/cron.log").read_text()
    assert "job seed-corrected: 1 of 1 checks passed" in log
    assert cron("jobs/no-such-job.toml") == 2   # the line's exit code is gradjob's
    assert (checkout / "reports/cron.log").read_text() == log + "gradjob: error: job file 'jobs/no-such-job.toml' does not exist\n"


# ---------------------------------------------------------------------------------------------
# Slurm, for real with bash; the cluster script stands in for Slurm where Slurm is needed


def slurm_checkout(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A checkout with deploy/ and jobs/, a `virtualenv` whose activate puts this gradjob on PATH,
    and the environment a batch job gets (no DASK_SCHEDULER_ADDRESS from this process)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(DEPLOY, checkout / "deploy")
    shutil.copytree(ROOT / "jobs", checkout / "jobs")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    batch_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(scratch),
                 "SLURM_SUBMIT_DIR": str(checkout), "GRADJOB_VENV": str(venv)}
    if "PYTHONPATH" in os.environ:   # what this Python imports, the batch job's Python imports too
        batch_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return checkout, batch_env


def sbatch(checkout: Path, batch_env: dict[str, str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    run = subprocess.run(["bash", str(checkout / "deploy/slurm/nightly.sbatch")], cwd=checkout.parent,
                         env=batch_env, capture_output=True, text=True, timeout=timeout)
    return run, time.monotonic() - start


def test_slurm_fails_fast_when_the_cluster_does_not_start(tmp_path):
    checkout, batch_env = slurm_checkout(tmp_path)
    batch_env["GRADJOB_INTERFACE"] = "gradjob-test-none"
    if importlib.util.find_spec("dask_jobqueue") is None:
        reason = "dask-jobqueue is not installed in this environment (pip install dask-jobqueue)"
    else:
        with pytest.raises(ValueError) as interface_error:
            get_ip_interface("gradjob-test-none")
        reason = "cannot start the Dask scheduler: " + " ".join(str(interface_error.value).split())
    run, seconds = sbatch(checkout, batch_env, timeout=30)
    assert run.returncode == 3 and seconds < 10, (run.returncode, seconds, run.stderr)
    assert run.stderr.splitlines()[-1] == ("gradjob-nightly: the Dask cluster did not start, so gradjob did not "
                                           f"run (slurm_cluster.py exited with 1: {reason})")
    assert not (checkout / "reports").exists() and run.stdout == ""
    assert os.listdir(batch_env["TMPDIR"]) == []   # the batch job's scratch folder is removed


STUB_CLUSTER = """\
import os, signal, sys
from pathlib import Path
def close(signum, frame):
    Path("cluster-closed").write_text(os.environ["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"])
    sys.exit(0)
signal.signal(signal.SIGTERM, close)
print({address!r}, flush=True)
while True:
    signal.pause()
"""


def test_slurm_runs_gradjob_against_the_clusters_address(tmp_path, cluster_address):
    """A stand-in for slurm_cluster.py prints a real scheduler's address: the batch script runs the
    nightly job there, exits with gradjob's code and closes the cluster on the way out. (The
    nightly job keeps its [job] and [reports] but checks the small seed network, to be quick.)"""
    checkout, batch_env = slurm_checkout(tmp_path)
    (checkout / "deploy/slurm/slurm_cluster.py").write_text(STUB_CLUSTER.format(address=cluster_address))
    nightly = (ROOT / "jobs/nightly.toml").read_text()
    (checkout / "jobs/nightly.toml").write_text(
        nightly[:nightly.index("[[check]]")] + '[[check]]\nname = "seed"\nmodel = "network"\ncase = "seed"\n')
    run, _ = sbatch(checkout, batch_env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[-1] == "job nightly: 1 of 1 checks passed"
    for report in ("nightly.json", "nightly.xml", "nightly.html"):
        assert (checkout / "reports" / report).stat().st_size > 0
    assert (checkout / "cluster-closed").read_text() == "1s"
    (checkout / "cluster-closed").unlink()
    (checkout / "jobs/nightly.toml").unlink()   # now gradjob exits 2, and so does the batch job
    run, _ = sbatch(checkout, batch_env)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == "gradjob: error: job file 'jobs/nightly.toml' does not exist"
    assert (checkout / "cluster-closed").exists()


def test_slurm_worker_jobs_with_dask_jobqueue():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed: the worker job script is not rendered")
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(**slurm_cluster_module().options({"GRADJOB_INTERFACE": "lo", "GRADJOB_PARTITION": "night"})) as cluster:
        script = cluster.job_script()
        address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    lines = script.splitlines()
    assert {"#SBATCH -J gradjob-worker", "#SBATCH -p night", "#SBATCH --cpus-per-task=1", "#SBATCH -t 06:00:00"} <= set(lines)
    assert {f"export {name}={value}" for name, value in (("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False"),
                                                         ("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "1s"))} <= set(lines)
    (worker,) = [shlex.split(line) for line in lines if "distributed.cli.dask_worker" in line]
    assert worker[1:3] == ["-m", "distributed.cli.dask_worker"]
    context = parse_dask(["dask", "worker"] + worker[3:])
    assert (context.params["scheduler"], context.params["nthreads"], context.params["interface"]) == (address, 1, "lo")



# ---------------------------------------------------------------------------------------------
# Slurm itself: a one-node Slurm from Debian's packages (deploy/slurm/one_node.sh), where installed

SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


@pytest.fixture(scope="module")
def one_node_slurm(tmp_path_factory):
    """SLURM_CONF of a running one-node Slurm with CR_Core_Memory (8000 MB, every core), stopped afterwards."""
    missing = [name for name in SLURM_PROGRAMS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing: "
                    "apt-get install slurmctld slurmd slurm-client munge)")
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed: slurm_cluster.py cannot start workers")
    state = tmp_path_factory.mktemp("slurm")
    script = str(DEPLOY / "slurm/one_node.sh")
    started = subprocess.run([script, "start", str(state)], capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout == f"export SLURM_CONF={state}/slurm.conf\n"
        yield str(state / "slurm.conf")
    finally:
        subprocess.run([script, "stop", str(state)], timeout=60)


def test_slurm_nightly_runs_on_a_one_node_slurm(tmp_path, one_node_slurm):
    """sbatch for real: the batch job requests its memory, so under CR_Core_Memory the worker job
    (4 GB) starts beside it on the same node; without --mem the batch job holds all 8000 MB and the
    worker job pends until GRADJOB_WORKER_WAIT. The worker jobs are cancelled when the job ends."""
    checkout, batch_env = slurm_checkout(tmp_path)
    nightly = (ROOT / "jobs/nightly.toml").read_text()
    (checkout / "jobs/nightly.toml").write_text(
        nightly[:nightly.index("[[check]]")] + '[[check]]\nname = "seed"\nmodel = "network"\ncase = "seed"\n')
    batch_env.pop("SLURM_SUBMIT_DIR")
    batch_env.update(SLURM_CONF=one_node_slurm, GRADJOB_INTERFACE="lo", GRADJOB_PARTITION="cpu",
                     GRADJOB_WORKERS="1", GRADJOB_WORKER_WAIT="60")
    run = subprocess.run(["sbatch", "--parsable", "--wait", "deploy/slurm/nightly.sbatch"], cwd=checkout,
                         env=batch_env, capture_output=True, text=True, timeout=300)
    (log,) = checkout.glob("gradjob-nightly-*.log")
    assert log.name == f"gradjob-nightly-{run.stdout.split()[0]}.log"
    state = Path(one_node_slurm).parent
    assert run.returncode == 0, "\n".join([log.read_text()[-3000:], *(p.read_text()[-1500:] for p in sorted(
        checkout.glob("slurm-*.out"))), (state / "slurmctld.log").read_text()[-3000:]])
    assert log.read_text().splitlines()[-1] == "job nightly: 1 of 1 checks passed"
    assert (checkout / "reports/nightly.xml").stat().st_size > 0
    jobs = subprocess.run(["squeue", "-h", "-o", "%j %T"], env=batch_env, capture_output=True, text=True, timeout=30)
    assert jobs.returncode == 0 and jobs.stdout == ""


# ---------------------------------------------------------------------------------------------
# deploy/README.md says what the files do


def test_readme_names_every_file_and_variable():
    readme = (DEPLOY / "README.md").read_text()
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"}
    for name in files:
        assert f"`{name}`" in readme or f"deploy/{name}" in readme, name
    for named in re.findall(r"deploy/([\w./-]+\w)", readme):
        assert (DEPLOY / named).exists(), named
    variables = set()
    for name in files:
        variables |= set(re.findall(r"\bGRADJOB_[A-Z_]+\b", (DEPLOY / name).read_text()))
    assert variables == set(re.findall(r"\bGRADJOB_[A-Z_]+\b", readme))
    assert textwrap.indent(shlex.join(COMMAND), "    ") in readme.splitlines()
