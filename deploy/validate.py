"""Checks of deploy/ that need no network and no cluster. Run by deploy/validate.sh, which installs
the packages this imports (deploy/requirements-validate.txt) and checks the compose file against the
compose specification.

  - every Kubernetes manifest listed in k8s/kustomization.yaml, and the kustomize output when given,
    against the Kubernetes JSON schemas in strict mode (unknown fields and unknown kinds fail), for
    the oldest and the newest Kubernetes version supported here;
  - the references between them: generated ConfigMaps and Secrets, Service selectors, autoscaler
    and disruption-budget targets, probes on /readyz and /healthz, non-root read-only containers,
    and a termination grace period that covers preStop plus server.shutdown_grace_ms;
  - the compose file's references: depends_on targets and their health checks, mounted files, and
    the port each mounted configuration listens on being the one published and probed;
  - every TOML file under deploy/ and every TOML in a ConfigMap parses, and each of its keys (and
    each BFF_* variable in the compose file and the manifests) is a key of the README's
    configuration reference, with [client] keys belonging to that BFF;
  - the configurations made for containers (deploy/compose/, the ConfigMaps) listen on 0.0.0.0,
    set the issuer and every upstream their BFF calls, and name no loopback address.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import yaml
from kubernetes_validate import utils as kv

# Oldest Kubernetes the manifests target (autoscaling/v2 and policy/v1 are GA well before it), and
# the newest the bundled schemas know.
K8S_VERSIONS = ["1.30.0", kv.latest_version()]

# Tables whose keys the operator names (as in the README test).
NAMED = {"upstreams", "ratelimit.policies", "ratelimit.tiers", "ratelimit.routes", "cache.ttl_secs"}
# What the README's meaning column starts with for a [client] key of each BFF.
CLIENT_OWNER = {"mobile": "mobile:", "web": "web:", "tv": "TV:", "partner": "partner:"}
BFFS = ("mobile", "web", "tv", "partner")
DEFAULT_SHUTDOWN_GRACE_MS = 10_000


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checks = 0

    def ok(self, what: str) -> None:
        self.checks += 1
        print(f"  ok    {what}")

    def fail(self, what: str) -> None:
        self.checks += 1
        self.errors.append(what)
        print(f"  FAIL  {what}")


# ---------------------------------------------------------------- configuration keys (README)


def readme_keys(readme: Path) -> dict[str, str]:
    """Key -> meaning, from the rows of the README's configuration reference."""
    keys = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([a-z_.<>\[\]]+)` \| .*? \| (.*) \|$", line)
        if m:
            keys[m.group(1)] = m.group(2)
    return keys


def readme_upstreams(readme: Path) -> dict[str, set[str]]:
    """BFF -> the upstreams it calls, from the README's sentence listing them."""
    text = " ".join(readme.read_text(encoding="utf-8").split())
    m = re.search(r"Upstreams each BFF calls \(each must be configured\): (.*?)\.(?: |$)", text)
    out: dict[str, set[str]] = {}
    if m:
        for part in m.group(1).split(";"):
            words = part.strip().split(" ", 1)
            if len(words) == 2:
                out[words[0].lower()] = set(re.findall(r"`([a-z_]+)`", words[1]))
    return out


def check_container_config(what: str, bff: str | None, data: dict, upstreams: dict[str, set[str]], r: Report) -> None:
    """A configuration for a container: listens on all interfaces, names no loopback address, and
    sets every upstream its BFF calls (one left out would keep its devstack default, 127.0.0.1)."""
    problems = []
    listen = data.get("server", {}).get("listen", "")
    if not listen.startswith("0.0.0.0:"):
        problems.append(f"server.listen {listen!r} is not 0.0.0.0")
    urls = [(f"upstreams.{n}.url", u.get("url", "")) for n, u in data.get("upstreams", {}).items()]
    for i, iss in enumerate(data.get("auth", {}).get("issuers", []) or []):
        urls += [(f"auth.issuers[{i}].issuer", iss.get("issuer", "")), (f"auth.issuers[{i}].jwks_url", iss.get("jwks_url") or "")]
    for key, url in urls:
        if re.search(r"//(127\.|localhost|\[::1\])", url):
            problems.append(f"{key} {url!r} is a loopback address")
    mode = data.get("auth", {}).get("mode", "api_key" if bff == "partner" else "jwt")
    if mode == "jwt" and not data.get("auth", {}).get("issuers"):
        problems.append("no [[auth.issuers]] (devstack's issuer on 127.0.0.1 would stay)")
    if bff in upstreams:
        missing = upstreams[bff] - set(data.get("upstreams", {}))
        if missing:
            problems.append(f"upstreams not set (would stay at devstack's 127.0.0.1): {', '.join(sorted(missing))}")
    if bff is None:
        problems.append("cannot tell which BFF it configures")
    if problems:
        r.fail(f"{what}: " + "; ".join(problems))
    else:
        r.ok(f"{what}: listens on {listen}, every upstream and issuer set, none on loopback")


def flatten(prefix: str, value, out: list[str]) -> None:
    """Dotted keys of a configuration, named tables as `<name>`, arrays of tables as `[]`."""
    if isinstance(value, dict) and prefix in NAMED:
        tables = [v for v in value.values() if isinstance(v, dict)]
        if not tables:
            out.append(prefix)
        for v in tables:
            flatten(f"{prefix}.<name>", v, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for v in value:
            flatten(f"{prefix}[]", v, out)
    elif isinstance(value, list) and not value:
        out.append(f"{prefix}[]")
    else:
        out.append(prefix)


def env_key(name: str) -> str | None:
    """`BFF_UPSTREAMS__USER__URL` -> `upstreams.<name>.url`, as the gateways read it; None for a
    variable they ignore (no `__`)."""
    if not name.startswith("BFF_") or "__" not in name:
        return None
    parts = name[len("BFF_"):].lower().split("__")
    key = parts[0]
    for part in parts[1:]:
        if key in NAMED and key not in {"upstreams", "ratelimit.policies"}:
            return key  # a map of names to values: the rest is the name
        key += ".<name>" if key in NAMED else f".{part}"
    return key


def is_documented(key: str, documented: dict[str, str]) -> bool:
    if key.endswith("[]"):
        # An empty list of tables: its name must be a documented list.
        return any(k.startswith(f"{key}.") for k in documented) or key[:-2] in documented
    return key in documented


def check_keys(what: str, bff: str | None, keys: list[str], documented: dict[str, str], r: Report) -> None:
    bad = [k for k in keys if not is_documented(k, documented)]
    wrong_bff = []
    if bff:
        for k in keys:
            if k.startswith("client.") and k in documented:
                if not documented[k].startswith(CLIENT_OWNER[bff]):
                    wrong_bff.append(k)
    if bad:
        r.fail(f"{what}: not configuration keys (see the README's reference): {', '.join(sorted(set(bad)))}")
    elif wrong_bff:
        r.fail(f"{what}: [client] keys of another BFF than bff-{bff}: {', '.join(sorted(set(wrong_bff)))}")
    else:
        r.ok(f"{what}: {len(set(keys))} configuration keys, all in the README's reference")


def bff_of(name: str) -> str | None:
    for b in BFFS:
        if re.search(rf"(^|[-_/]){b}([-_.]|$)", name):
            return b
    return None


def check_toml(what: str, text: str, documented: dict[str, str], r: Report, bff: str | None):
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        r.fail(f"{what}: TOML does not parse: {e}")
        return None
    r.ok(f"{what}: TOML parses")
    keys: list[str] = []
    flatten("", data, keys)
    check_keys(what, bff, keys, documented, r)
    return data


# ---------------------------------------------------------------- Kubernetes


def load_yaml_docs(path: Path, r: Report) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        r.fail(f"{path.name}: YAML does not parse: {e}")
        return []
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            r.fail(f"{path.name}: a document without kind and apiVersion")
            return []
    return docs


def schema_check(label: str, docs: list[dict], r: Report) -> None:
    for doc in docs:
        name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                r.fail(f"{label}: {name}: no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {version}")
                break
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                r.fail(f"{label}: {name}: invalid for Kubernetes {version} at {path}: {e.message}")
                break
            except Exception as e:  # noqa: BLE001 - any other failure is a failed check too
                r.fail(f"{label}: {name}: cannot validate for Kubernetes {version}: {e}")
                break
        else:
            r.ok(f"{label}: {name} valid for Kubernetes {', '.join(v.rsplit('.', 1)[0] for v in K8S_VERSIONS)} (strict)")


def containers(doc: dict) -> list[dict]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) or []


def pod_spec(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("spec", {}) or {}


def check_k8s(k8s: Path, documented: dict[str, str], upstreams: dict[str, set[str]], rendered: Path | None, r: Report) -> None:
    kfile = k8s / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    if not isinstance(kust, dict) or kust.get("kind") != "Kustomization":
        r.fail("k8s/kustomization.yaml: not a Kustomization")
        return

    def inside(rel: str) -> Path | None:
        p = (k8s / rel).resolve()
        if k8s.resolve() not in p.parents or not p.is_file():
            r.fail(f"k8s/kustomization.yaml: {rel} is not a file under k8s/")
            return None
        return p

    docs: list[dict] = []
    for rel in kust.get("resources", []):
        p = inside(rel)
        if p:
            file_docs = load_yaml_docs(p, r)
            schema_check(f"k8s/{rel}", file_docs, r)
            docs += file_docs
    listed = {(k8s / rel).resolve() for rel in kust.get("resources", [])}
    for p in sorted(k8s.glob("*.yaml")):
        if p.name != "kustomization.yaml" and p.resolve() not in listed:
            r.fail(f"k8s/{p.name}: not listed in kustomization.yaml resources")

    # Generated ConfigMaps (TOML files) and Secrets.
    config_maps: dict[str, dict[str, str]] = {}
    for gen in kust.get("configMapGenerator", []) or []:
        data = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            p = inside(rel)
            if p:
                data[key] = p.read_text(encoding="utf-8")
        config_maps[gen["name"]] = data
    secrets: dict[str, set[str]] = {}
    for gen in kust.get("secretGenerator", []) or []:
        secrets[gen["name"]] = {lit.split("=", 1)[0] for lit in gen.get("literals", [])}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            config_maps[doc["metadata"]["name"]] = doc.get("data", {}) or {}
        if doc["kind"] == "Secret":
            secrets[doc["metadata"]["name"]] = set((doc.get("data") or {}) | (doc.get("stringData") or {}))

    tomls: dict[str, dict] = {}
    for cm, data in config_maps.items():
        for key, text in data.items():
            if key.endswith(".toml"):
                parsed = check_toml(f"ConfigMap {cm} {key}", text, documented, r, bff_of(cm))
                if parsed is not None:
                    tomls[f"{cm}/{key}"] = parsed
                    check_container_config(f"ConfigMap {cm} {key}", bff_of(cm), parsed, upstreams, r)

    images = {i["name"] for i in kust.get("images", []) or []}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for name, d in deployments.items():
        spec = pod_spec(d)
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        selector = d["spec"]["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            r.fail(f"{name}: selector does not match the pod labels")
        problems = []
        sc = spec.get("securityContext", {}) or {}
        for c in containers(d):
            csc = c.get("securityContext", {}) or {}
            if not (csc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
                problems.append(f"{c['name']} may run as root")
            if not csc.get("readOnlyRootFilesystem"):
                problems.append(f"{c['name']} has a writable root file system")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{c['name']} allows privilege escalation")
            if "ALL" not in (csc.get("capabilities", {}) or {}).get("drop", []):
                problems.append(f"{c['name']} keeps capabilities")
            if "resources" not in c or not {"requests", "limits"} <= set(c["resources"]):
                problems.append(f"{c['name']} lacks resource requests or limits")
            image = c["image"].split(":")[0]
            if image.startswith("bff-gateway") and image not in images:
                problems.append(f"{c['name']} uses {c['image']}, not set in kustomization images")
            for e in c.get("env", []) or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], set()):
                    problems.append(f"{c['name']}: env {e['name']} refers to a missing secret key {ref['name']}/{ref['key']}")
                key = env_key(e["name"])
                if key is not None and key not in documented:
                    problems.append(f"{c['name']}: env {e['name']} is not a configuration key ({key})")
        for v in spec.get("volumes", []) or []:
            if "configMap" in v and v["configMap"]["name"] not in config_maps:
                problems.append(f"volume {v['name']} refers to a missing ConfigMap {v['configMap']['name']}")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                problems.append(f"volume {v['name']} refers to a missing Secret {v['secret']['secretName']}")
        if problems:
            r.fail(f"{name}: " + "; ".join(problems))
        else:
            r.ok(f"{name}: non-root, read-only root, no capabilities, resources set, references resolve")

        if not name.startswith("bff-"):
            continue
        # A gateway: probes, configuration file and the drain timing.
        c = containers(d)[0]
        args = c.get("command", []) + c.get("args", [])
        ready = (c.get("readinessProbe") or {}).get("httpGet", {}).get("path")
        live = (c.get("livenessProbe") or {}).get("httpGet", {}).get("path")
        if ready != "/readyz" or live != "/healthz":
            r.fail(f"{name}: readiness must probe /readyz and liveness /healthz (got {ready}, {live})")
        else:
            r.ok(f"{name}: readiness on /readyz, liveness on /healthz")
        if "--config" not in args:
            r.fail(f"{name}: no --config argument")
            continue
        path = args[args.index("--config") + 1]
        config = None
        for m in c.get("volumeMounts", []) or []:
            if path.startswith(m["mountPath"].rstrip("/") + "/"):
                vol = next(v for v in spec.get("volumes", []) if v["name"] == m["name"])
                cm = (vol.get("configMap") or {}).get("name")
                config = tomls.get(f"{cm}/{path[len(m['mountPath'].rstrip('/')) + 1:]}")
        if config is None:
            r.fail(f"{name}: --config {path} is not a TOML file of a mounted ConfigMap")
            continue
        port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == "http"), None)
        listen = config.get("server", {}).get("listen", "")
        if not listen.startswith("0.0.0.0:") or port is None or not listen.endswith(f":{port}"):
            r.fail(f"{name}: server.listen {listen!r} must be 0.0.0.0 on the container port {port}")
        else:
            r.ok(f"{name}: listens on {listen}, the container port")
        grace_ms = config.get("server", {}).get("shutdown_grace_ms", DEFAULT_SHUTDOWN_GRACE_MS)
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command", [])
        pre_secs = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
        period = spec.get("terminationGracePeriodSeconds", 30)
        if period < pre_secs + grace_ms / 1000 + 1:
            r.fail(f"{name}: terminationGracePeriodSeconds {period} < preStop {pre_secs} s + shutdown_grace_ms {grace_ms} + 1 s")
        else:
            r.ok(f"{name}: terminationGracePeriodSeconds {period} covers preStop {pre_secs} s + shutdown_grace_ms {grace_ms}")

    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Service":
            sel = doc["spec"].get("selector", {})
            ports = {p.get("name") for p in doc["spec"].get("ports", [])}
            match = [
                d for d in deployments.values()
                if all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
            ]
            named = {p.get("name") for d in match for c in containers(d) for p in c.get("ports", [])}
            targets = {p.get("targetPort") for p in doc["spec"].get("ports", [])}
            if not match:
                r.fail(f"Service {name}: selector {sel} matches no pods")
            elif not all(t in named or isinstance(t, int) for t in targets):
                r.fail(f"Service {name}: target ports {targets} not all among the pods' ports {named}")
            else:
                r.ok(f"Service {name}: selects {', '.join(d['metadata']['name'] for d in match)} on {', '.join(sorted(p for p in ports if p))}")
        if kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if ref["name"] not in deployments:
                r.fail(f"HorizontalPodAutoscaler {name}: no {ref['kind']} {ref['name']}")
            elif "replicas" in deployments[ref["name"]]["spec"]:
                r.fail(f"HorizontalPodAutoscaler {name}: {ref['name']} sets replicas, which every apply would reset")
            else:
                r.ok(f"HorizontalPodAutoscaler {name}: scales {ref['name']} from {doc['spec'].get('minReplicas', 1)} to {doc['spec']['maxReplicas']}")
        if kind == "PodDisruptionBudget":
            sel = doc["spec"]["selector"].get("matchLabels", {})
            if not any(
                all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
                for d in deployments.values()
            ):
                r.fail(f"PodDisruptionBudget {name}: selector {sel} matches no pods")
            else:
                r.ok(f"PodDisruptionBudget {name}: covers its pods")

    if rendered is not None:
        out = load_yaml_docs(rendered, r)
        kinds = sorted({d["kind"] for d in out})
        r.ok(f"kustomize build: {len(out)} objects ({', '.join(kinds)})")
        schema_check("kustomize build", out, r)


# ---------------------------------------------------------------- compose


def check_compose(compose: Path, documented: dict[str, str], r: Report) -> None:
    data = yaml.safe_load(compose.read_text(encoding="utf-8"))
    services = data.get("services", {})
    for name, svc in services.items():
        problems = []
        deps = svc.get("depends_on", {}) or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, cond in deps.items():
            if dep not in services:
                problems.append(f"depends on unknown service {dep}")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"waits for {dep} to be healthy, which has no healthcheck")
        mounts = []
        for v in svc.get("volumes", []) or []:
            src, dst = (v.split(":")[0], v.split(":")[1]) if isinstance(v, str) else (v.get("source"), v.get("target"))
            if src.startswith(".") and not (compose.parent / src).exists():
                problems.append(f"mounts {src}, which does not exist")
            mounts.append(dst)
        command = svc.get("command", [])
        if isinstance(command, list) and "--config" in command:
            path = command[command.index("--config") + 1]
            if path not in mounts:
                problems.append(f"--config {path} is not mounted")
            else:
                # The port the mounted configuration listens on is the one published and probed.
                vol = next(v for v in svc["volumes"] if isinstance(v, str) and v.split(":")[1] == path)
                conf = tomllib.loads((compose.parent / vol.split(":")[0]).read_text(encoding="utf-8"))
                port = conf.get("server", {}).get("listen", "").rsplit(":", 1)[-1]
                test = " ".join(svc.get("healthcheck", {}).get("test", []))
                published = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])]
                if f":{port}/" not in test:
                    problems.append(f"healthcheck does not probe the configured port {port}")
                if published and port not in published:
                    problems.append(f"publishes {published}, not the configured port {port}")
        env = svc.get("environment", {}) or {}
        names = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for n in names:
            key = env_key(n)
            if key is not None and key not in documented:
                problems.append(f"environment {n} is not a configuration key ({key})")
        if "healthcheck" not in svc:
            problems.append("no healthcheck")
        if problems:
            r.fail(f"docker-compose.yml {name}: " + "; ".join(problems))
        else:
            r.ok(f"docker-compose.yml {name}: dependencies, mounts, environment and healthcheck consistent")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deploy", type=Path, required=True)
    ap.add_argument("--readme", type=Path, required=True)
    ap.add_argument("--rendered", type=Path, help="output of kustomize build deploy/k8s")
    a = ap.parse_args()
    deploy: Path = a.deploy
    r = Report()
    documented = readme_keys(a.readme)
    if len(documented) < 50:
        print(f"cannot read the README's configuration reference ({len(documented)} keys)")
        return 1

    upstreams = readme_upstreams(a.readme)
    if set(upstreams) != set(BFFS):
        print(f"cannot read the upstreams each BFF calls from the README (got {sorted(upstreams)})")
        return 1

    print("TOML files under deploy/")
    for p in sorted(deploy.rglob("*.toml")):
        rel = p.relative_to(deploy).as_posix()
        data = check_toml(rel, p.read_text(encoding="utf-8"), documented, r, bff_of(p.stem))
        if data is not None and rel.startswith("compose/"):
            check_container_config(rel, bff_of(p.stem), data, upstreams, r)

    print("Kubernetes manifests")
    check_k8s(deploy / "k8s", documented, upstreams, a.rendered, r)

    print("docker-compose.yml")
    check_compose(deploy / "docker-compose.yml", documented, r)

    if r.errors:
        print(f"\n{len(r.errors)} of {r.checks} checks failed:")
        for e in r.errors:
            print(f"  - {e}")
        return 1
    print(f"\nall {r.checks} checks ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
