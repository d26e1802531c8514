#!/usr/bin/env python3
"""Checks the Kubernetes manifests in this folder (ops/test runs it).

1. Every document validates against the Kubernetes API schema
   (kubernetes-validate, strict: unknown fields are errors).
2. The deployment rules the manifests exist for hold: every object a pod
   refers to is shipped, service links are off, the vault's headless
   Service publishes not-ready pods, non-root pods can read their secrets
   and write their volumes, node ids do not come from pod ordinals, a
   ReadWriteOnce volume is never shared by replicas, and so on.
3. chatd and hsm-vault start, for real, with exactly the environment
   Kubernetes injects for the Services shipped here (the service link
   variables of every Service in the namespace), plus the variables the
   manifests set themselves.

Usage: check.py BIN_DIR   (the folder holding the built chatd and hsm-vault)
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checks import chatd_config, fail, failures, finish, init_and_serve, softhsm_token, vault_config, write  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KUBERNETES_VERSION = "1.30.0"


def load_docs():
    docs = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        with open(path) as f:
            for d in yaml.safe_load_all(f):
                if d:
                    docs.append((os.path.basename(path), d))
    return docs


def schema(paths):
    out = subprocess.run(
        ["kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", "--quiet", *paths],
        capture_output=True, text=True)
    if out.returncode != 0:
        fail("schema validation:\n" + out.stdout + out.stderr)
    else:
        print(f"ok   {len(paths)} files validate against Kubernetes {KUBERNETES_VERSION} (strict)")


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == kind}


def pod_templates(docs):
    for _, d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def rules(docs):
    configmaps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    services = by_kind(docs, "Service")
    pdbs = [d for _, d in docs if d["kind"] == "PodDisruptionBudget"]
    policies = [d for _, d in docs if d["kind"] == "NetworkPolicy"]
    for w, spec in pod_templates(docs):
        name = f'{w["kind"]}/{w["metadata"]["name"]}'
        app = w["spec"]["selector"]["matchLabels"]["app"]
        sc = spec.get("securityContext", {})
        non_root = sc.get("runAsNonRoot") or any(
            c.get("securityContext", {}).get("runAsNonRoot") for c in containers(spec))
        if spec.get("enableServiceLinks") is not False:
            fail(f"{name}: enableServiceLinks must be false")
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                fail(f'{name}: ConfigMap {v["configMap"]["name"]} is not shipped')
            if "secret" in v:
                if v["secret"]["secretName"] not in secrets:
                    fail(f'{name}: Secret {v["secret"]["secretName"]} is not shipped')
                mode = v["secret"].get("defaultMode", 0o644)
                if non_root and not (sc.get("fsGroup") and mode & 0o040):
                    fail(f'{name}: secret {v["name"]} (mode {mode:o}) is unreadable for a non-root user without fsGroup and group read')
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if claim not in pvcs:
                    fail(f"{name}: PersistentVolumeClaim {claim} is not shipped")
                elif "ReadWriteOnce" in pvcs[claim]["spec"]["accessModes"] and w["spec"].get("replicas", 1) > 1:
                    fail(f"{name}: {w['spec']['replicas']} replicas share the ReadWriteOnce claim {claim}")
                elif w["kind"] == "Deployment" and w["spec"].get("strategy", {}).get("type") != "Recreate":
                    fail(f"{name}: a rolling update would attach the ReadWriteOnce claim {claim} to two pods")
        if (w["spec"].get("volumeClaimTemplates") or any("persistentVolumeClaim" in v for v in spec.get("volumes", []))) \
                and non_root and not sc.get("fsGroup"):
            fail(f"{name}: the volume is not writable by the non-root user without fsGroup")
        for c in containers(spec):
            cname = f'{name}/{c["name"]}'
            if not c.get("resources", {}).get("requests"):
                fail(f"{cname}: no resource requests")
            csc = c.get("securityContext", {})
            if csc.get("allowPrivilegeEscalation") is not False or not csc.get("readOnlyRootFilesystem"):
                fail(f"{cname}: needs allowPrivilegeEscalation: false and readOnlyRootFilesystem")
            env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
            for k, v in env.items():
                if "ADMIN__LISTEN" in k and v.startswith("0.0.0.0"):
                    fail(f"{cname}: {k} listens on every interface")
            text = " ".join(c.get("command", []) + c.get("args", []))
            if "NODE_ID" in text and "##*-" in text:
                fail(f"{cname}: the Raft node id is derived from the pod ordinal")
        main = spec["containers"][0]
        if "startupProbe" not in main:
            fail(f"{name}: no startupProbe")
        affinity = spec.get("affinity", {}).get("podAntiAffinity", {})
        for term in affinity.get("requiredDuringSchedulingIgnoredDuringExecution", []):
            if term.get("topologyKey") == "topology.kubernetes.io/zone":
                fail(f"{name}: required zone anti-affinity leaves pods Pending with fewer zones than replicas")
        if not any(p["spec"]["podSelector"].get("matchLabels", {}).get("app") == app for p in policies):
            fail(f"{name}: no NetworkPolicy selects app={app}")
        if w["spec"].get("replicas", 1) > 1 and not any(
                p["spec"]["selector"]["matchLabels"].get("app") == app for p in pdbs):
            fail(f"{name}: {w['spec']['replicas']} replicas and no PodDisruptionBudget")
        if app == "chatd" and "preStop" not in main.get("lifecycle", {}):
            fail(f"{name}: no preStop before the drain")
        if w["kind"] == "StatefulSet":
            svc = services.get(w["spec"]["serviceName"])
            if not svc or svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
                fail(f"{name}: its headless Service must publish not-ready addresses (peers find each other before any is ready)")
    if not failures:
        print("ok   deployment rules hold")


def service_env(services, include_headless):
    """What kubelet injects for each Service of the namespace (docker links
    style): NAME_SERVICE_HOST, NAME_SERVICE_PORT[_PORTNAME], NAME_PORT,
    NAME_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]. Headless Services get
    none; with include_headless they are treated as if they had a cluster
    IP (a ClusterIP Service named hsm-vault would hand the vault
    HSM_VAULT_PORT=tcp://...)."""
    env = {}
    for i, (name, svc) in enumerate(sorted(services.items())):
        spec = svc["spec"]
        if spec.get("clusterIP") == "None" and not include_headless:
            continue
        ip = f"10.96.0.{10 + i}"
        prefix = name.upper().replace("-", "_")
        ports = spec["ports"]
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for p in ports:
            proto = p.get("protocol", "TCP")
            port = str(p["port"])
            if p.get("name"):
                env[f'{prefix}_SERVICE_PORT_{p["name"].upper().replace("-", "_")}'] = port
            base = f"{prefix}_PORT_{port}_{proto}"
            env[base] = f"{proto.lower()}://{ip}:{port}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = port
            env[f"{base}_ADDR"] = ip
        env[f"{prefix}_PORT"] = f'{ports[0].get("protocol", "TCP").lower()}://{ip}:{ports[0]["port"]}'
    return env


def manifest_env(docs, app):
    """The plain env values the manifests give a workload's main container,
    with pod fields replaced by loopback stand-ins."""
    for w, spec in pod_templates(docs):
        if w["spec"]["selector"]["matchLabels"]["app"] == app:
            out = {}
            for e in spec["containers"][0].get("env", []):
                if "value" in e:
                    v = e["value"].replace("$(POD_IP)", "127.0.0.1").replace("$(POD_NAME)", f"{app}-0")
                    out[e["name"]] = re.sub(r":\d+$", ":0", v) if e["name"].endswith("LISTEN") or e["name"].endswith("__ADDR") else v
            return out
    return {}


def run_binaries(docs, bin_dir):
    services = by_kind(docs, "Service")
    injected = service_env(services, include_headless=True)
    print(f"ok   {len(service_env(services, False))} service link variables for the shipped Services, "
          f"{len(injected)} with the headless ones given cluster IPs: {sorted(services)}")
    base = {k: v for k, v in os.environ.items() if not (k.startswith("CHATD_") or k.startswith("HSM_VAULT_"))}
    base.pop("RUST_LOG", None)
    tmp = tempfile.mkdtemp(prefix="e2ebk-k8s-env-")
    try:
        # chatd: keys, then serve until it listens.
        cdir = os.path.join(tmp, "chatd")
        os.makedirs(cdir)
        write(os.path.join(cdir, "chatd.toml"), chatd_config("data"))
        env = {**base, **manifest_env(docs, "chatd"), **injected}
        init_and_serve(os.path.join(bin_dir, "chatd"), os.path.join(cdir, "chatd.toml"), [], env, cdir,
                       what="with the Kubernetes environment")

        # hsm-vault: a SoftHSM token, init, then serve until it listens.
        vdir = os.path.join(tmp, "vault")
        os.makedirs(vdir)
        conf, pin = softhsm_token(os.path.join(vdir, "tokens"), vdir)
        write(os.path.join(vdir, "vault.toml"), vault_config("data", pin))
        vault_env = manifest_env(docs, "hsm-vault")
        # The pod's raft settings need a formed group; this checks start-up.
        vault_env = {k: v for k, v in vault_env.items() if "RAFT__" not in k and "CONTROL__" not in k}
        # SoftHSM's configuration is the test's own, not the pod's path.
        env = {**base, **vault_env, **injected, "SOFTHSM2_CONF": conf}
        init_and_serve(os.path.join(bin_dir, "hsm-vault"), os.path.join(vdir, "vault.toml"),
                       ["--fleet-id", "k8s-env"], env, vdir, what="with the Kubernetes environment")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    docs = load_docs()
    schema(sorted(glob.glob(os.path.join(HERE, "*.yaml"))))
    rules(docs)
    run_binaries(docs, sys.argv[1])
    finish("Kubernetes manifests")


if __name__ == "__main__":
    main()
