#!/usr/bin/env python3
"""Offline check of deploy/kubernetes: render each kustomization, validate every object, and
check that the objects agree with each other and with the policy. No cluster needed.

1. Render. A small renderer of the Kustomize features these files use (resources, namespace,
   configMapGenerator from files, generatorOptions.disableNameSuffixHash); any other field
   is an error, so nothing goes unchecked silently. When `kubectl` is installed its built-in
   Kustomize renders the same kustomization too and the two must agree.
2. Schemas. Kubernetes objects against the OpenAPI-derived JSON schemas of Kubernetes
   KUBERNETES_VERSION that the `kubernetes-validate` package ships, in strict mode (unknown
   fields are errors, as with kubectl's default field validation); KEDA ScaledObjects
   against schemas/keda-scaledobject-v1alpha1.json with `jsonschema`.
3. Cross-references that no schema sees: Secret keys and ConfigMaps that pods use exist;
   the gateway's --policy path is inside the ConfigMap's directory mount (not a subPath);
   every ${NAME} in the policy is set in the gateway's environment; Services select pods
   and name their ports; each pool endpoint in the policy is a headless Service on that
   port; ScaledObjects scale a Deployment, name a pool of the policy and point at the
   gateway's `keda` Service port; the shutdown timings fit in the grace period.

Usage: validate.py [KUSTOMIZATION_DIR ...]   (default: base and every overlay)
Exit status 1 on any problem, each printed as `file-or-object: message`.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.30.0"
HERE = os.path.dirname(os.path.abspath(__file__))
KEDA_SCHEMA = os.path.join(HERE, "schemas", "keda-scaledobject-v1alpha1.json")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "generatorOptions",
}
# Kinds with no namespace that these manifests may hold.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"}

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def rel(path):
    return os.path.relpath(path, os.getcwd())


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory, seen=()):
    """The objects a kustomization directory renders to, as Kustomize would."""
    directory = os.path.abspath(directory)
    if directory in seen:
        raise SystemExit(f"{rel(directory)}: kustomization cycle")
    path = os.path.join(directory, "kustomization.yaml")
    (kustomization,) = load_yaml_documents(path)
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        problem(rel(path), f"fields {sorted(unsupported)} are not rendered by validate.py; extend it first")
    objects = []
    for entry in kustomization.get("resources", []):
        target = os.path.join(directory, entry)
        if os.path.isdir(target):
            objects.extend(render(target, seen + (directory,)))
        else:
            for doc in load_yaml_documents(target):
                doc.setdefault("metadata", {})
                objects.append((rel(target), doc))
    options = kustomization.get("generatorOptions", {})
    for gen in kustomization.get("configMapGenerator", []):
        data = {}
        for item in gen.get("files", []):
            key, _, file = item.partition("=") if "=" in item else (os.path.basename(item), "", item)
            with open(os.path.join(directory, file), encoding="utf-8") as f:
                data[key] = f.read()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        if not options.get("disableNameSuffixHash", False):
            problem(
                rel(path),
                f"configMapGenerator {gen['name']}: the name hash is on; validate.py renders only hash-free names",
            )
        objects.append(
            (
                rel(path),
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data},
            )
        )
    namespace = kustomization.get("namespace")
    if namespace:
        for _, obj in objects:
            if obj.get("kind") == "Namespace":
                if obj["metadata"].get("name") != namespace:
                    problem(
                        rel(path),
                        f"Namespace object {obj['metadata'].get('name')} is not the kustomization's namespace {namespace}",
                    )
            elif obj.get("kind") not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def ident(obj):
    m = obj.get("metadata", {})
    ns = m.get("namespace", "")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{m.get('name')}"


def compare_with_kubectl(directory, objects):
    """The same rendering from kubectl's built-in Kustomize, when kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print(f"  (kubectl not installed: rendering of {rel(directory)} not cross-checked)")
        return
    out = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if out.returncode != 0:
        problem(rel(directory), f"kubectl kustomize failed: {out.stderr.strip()}")
        return
    theirs = {ident(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {ident(o): o for _, o in objects}
    if set(theirs) != set(ours):
        problem(rel(directory), f"kubectl kustomize renders {sorted(set(theirs) ^ set(ours))} differently")
        return
    for key, obj in ours.items():
        if obj != theirs[key]:
            problem(key, "validate.py's rendering differs from kubectl kustomize's")
    print(f"  kubectl kustomize {rel(directory)}: the same {len(ours)} objects")


def validate_schemas(objects):
    with open(KEDA_SCHEMA, encoding="utf-8") as f:
        keda = jsonschema.Draft202012Validator(json.load(f))
    for source, obj in objects:
        where = f"{source} {ident(obj)}"
        if obj.get("apiVersion") == "keda.sh/v1alpha1" and obj.get("kind") == "ScaledObject":
            for e in sorted(keda.iter_errors(obj), key=lambda e: list(e.path)):
                problem(where, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problem(where, f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            problem(where, e.message)


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def pod_labels(obj):
    return obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * (60 if unit == "m" else 1)


def cross_check(objects):
    by_kind = {}
    for _, obj in objects:
        by_kind.setdefault(obj.get("kind"), {})[obj["metadata"].get("name")] = obj
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    deployments = by_kind.get("Deployment", {})
    workloads = [o for _, o in objects if pod_spec(o) is not None]

    # Secrets and ConfigMaps that pods refer to.
    for w in workloads:
        spec = pod_spec(w)
        for c in spec.get("containers", []):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    secret = secrets.get(ref["name"])
                    keys = set((secret or {}).get("stringData", {})) | set((secret or {}).get("data", {}))
                    if ref["key"] not in keys:
                        problem(ident(w), f"env {env['name']}: Secret {ref['name']} has no key {ref['key']}")
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(ident(w), f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")

    # Services: a selector that matches a workload, target ports that a container names.
    for name, svc in services.items():
        selector = svc.get("spec", {}).get("selector", {})
        matched = [w for w in workloads if selector and selector.items() <= pod_labels(w).items()]
        if not matched:
            problem(ident(svc), f"selector {selector} matches no workload")
            continue
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            ports = {
                p.get("name") if isinstance(target, str) else p["containerPort"]
                for w in matched
                for c in pod_spec(w).get("containers", [])
                for p in c.get("ports", [])
            }
            if target not in ports:
                problem(ident(svc), f"port {port.get('name')}: no container port {target}")

    gateway = deployments.get("switchyard")
    if gateway is None:
        problem("render", "no Deployment `switchyard` (the gateway)")
        return
    spec = pod_spec(gateway)
    container = spec["containers"][0]
    cmd = container.get("command", []) + container.get("args", [])
    if "--policy" not in cmd:
        problem(ident(gateway), "the gateway is not given --policy")
        return
    policy_path = cmd[cmd.index("--policy") + 1]
    mounts = [m for m in container.get("volumeMounts", []) if os.path.dirname(policy_path) == m["mountPath"]]
    if any(m["mountPath"] == policy_path for m in container.get("volumeMounts", [])):
        problem(
            ident(gateway),
            f"--policy {policy_path} is mounted as a single file (subPath): the kubelet never updates it; mount the ConfigMap as a directory",
        )
        return
    if not mounts:
        problem(ident(gateway), f"--policy {policy_path} is not in a mounted directory")
        return
    mount = mounts[0]
    if "subPath" in mount or "subPathExpr" in mount:
        problem(
            ident(gateway), f"volume {mount['name']} is mounted with subPath: the kubelet never updates it"
        )
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
    cm = configmaps.get(volume.get("configMap", {}).get("name"))
    key = os.path.basename(policy_path)
    if cm is None or key not in cm.get("data", {}):
        problem(ident(gateway), f"--policy {policy_path}: the mounted ConfigMap has no key {key}")
        return
    policy = yaml.safe_load(cm["data"][key])

    # Every ${NAME} the policy expands is in the gateway's environment.
    env_names = {e["name"] for e in container.get("env", [])}

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)

    expanded = {
        n for s in strings(policy) for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", s)
    }
    for name in sorted(expanded):
        if name not in env_names:
            problem(ident(gateway), f"the policy expands ${{{name}}} but the container does not set it")

    # The shutdown sequence fits: preStop sleep + shutdown_grace + Pingora's 5 s bound.
    grace = duration_seconds(policy.get("listeners", {}).get("shutdown_grace", "5s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] and len(pre_stop) == 2 else 0
    period = spec.get("terminationGracePeriodSeconds", 30)
    if sleep < 3:
        problem(ident(gateway), "preStop should sleep a few seconds so load balancers stop sending first")
    if grace is None or sleep + grace + 5 > period:
        problem(
            ident(gateway),
            f"preStop {sleep}s + shutdown_grace {grace}s + 5s exceeds terminationGracePeriodSeconds {period}",
        )

    # Each pool endpoint `host:port` is a headless Service of that name with that port.
    pools = {p["name"]: p for p in policy.get("pools", [])}
    for pool in pools.values():
        for endpoint in pool.get("endpoints", []):
            if not isinstance(endpoint, str) or "://" in endpoint:
                continue
            host, _, port = endpoint.rpartition(":")
            svc = services.get(host)
            if svc is None:
                problem(f"policy pool {pool['name']}", f"endpoint {endpoint}: no Service {host}")
                continue
            if svc["spec"].get("clusterIP") != "None":
                problem(
                    ident(svc),
                    f"pool {pool['name']}'s Service must be headless (clusterIP: None) so each pod is an endpoint",
                )
            if int(port) not in {p["port"] for p in svc["spec"].get("ports", [])}:
                problem(ident(svc), f"pool {pool['name']}: no port {port}")

    # ScaledObjects: a Deployment to scale, a pool of the policy, the gateway's `keda` port.
    for name, so in by_kind.get("ScaledObject", {}).items():
        target = so["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
            problem(ident(so), f"scaleTargetRef {target['name']} is not a Deployment here")
        for trigger in so["spec"].get("triggers", []):
            if trigger.get("type") not in ("external", "external-push"):
                continue
            meta = trigger.get("metadata", {})
            if meta.get("pool") not in pools:
                problem(ident(so), f"trigger metadata.pool {meta.get('pool')!r} is not a pool of the policy")
            elif "capacity" not in pools[meta["pool"]]:
                problem(ident(so), f"pool {meta['pool']!r} has no `capacity:` block: the scaler has no replicas for it")
            keda_listener = policy.get("listeners", {}).get("keda", "")
            if keda_listener.rpartition(":")[2] != meta.get("scalerAddress", "").rpartition(":")[2]:
                problem(ident(so), f"policy listeners.keda ({keda_listener or 'off'}) is not on scalerAddress's port")
            host, _, port = meta.get("scalerAddress", "").rpartition(":")
            parts = host.split(".")
            svc = services.get(parts[0])
            ns = so["metadata"].get("namespace")
            if svc is None or (len(parts) > 1 and parts[1] != ns):
                problem(
                    ident(so),
                    f"scalerAddress {meta.get('scalerAddress')}: no Service {parts[0]} in namespace {ns}",
                )
                continue
            keda = [p for p in svc["spec"]["ports"] if p.get("name") == "keda"]
            if not keda or str(keda[0]["port"]) != port:
                problem(ident(so), f"scalerAddress port {port} is not Service {parts[0]}'s `keda` port")
            selector = svc["spec"].get("selector", {})
            if not selector.items() <= pod_labels(gateway).items():
                problem(ident(so), f"scalerAddress Service {parts[0]} does not select the gateway")


def main(argv):
    dirs = argv or [os.path.join(HERE, "base")] + sorted(
        os.path.join(HERE, "overlays", d)
        for d in os.listdir(os.path.join(HERE, "overlays"))
        if os.path.isfile(os.path.join(HERE, "overlays", d, "kustomization.yaml"))
    )
    print(
        f"validating against Kubernetes {KUBERNETES_VERSION} (kubernetes-validate {kubernetes_validate.__version__}) and {rel(KEDA_SCHEMA)}"
    )
    for directory in dirs:
        before = len(problems)
        objects = render(directory)
        compare_with_kubectl(directory, objects)
        validate_schemas(objects)
        cross_check(objects)
        kinds = sorted({o["kind"] for _, o in objects})
        status = "ok" if len(problems) == before else f"{len(problems) - before} problem(s)"
        print(f"  {rel(directory)}: {len(objects)} objects ({', '.join(kinds)}): {status}")
    # An overlay renders its base again: say each problem once.
    for p in dict.fromkeys(problems):
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
