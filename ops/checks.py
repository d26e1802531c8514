"""What the deployment checks in ops/ share (kubernetes/check.py,
systemd/sandbox.py): recording failures, minimal configurations, a SoftHSM
token, and starting a binary until it serves."""

import os
import signal
import subprocess
import sys
import time

failures = []

LINK_KEY = "07" * 32


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", file=sys.stderr)


def finish(what):
    if failures:
        sys.exit(f"{len(failures)} {what} check(s) failed")
    print(f"{what}: all checks passed")


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def chatd_config(data_dir):
    """chatd on loopback ports chosen by the kernel, no vault reachable."""
    return (f'data_dir = "{data_dir}"\n[listen]\naddr = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
            f'[vault]\nreplicas = ["127.0.0.1:9"]\nlink_key = "{LINK_KEY}"\n')


def softhsm_module():
    for p in ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
              "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"]:
        if os.path.exists(p):
            return p
    sys.exit("libsofthsm2.so not found; is softhsm2 installed?")


def softhsm_token(tokendir, folder):
    """A SoftHSM configuration in `folder` with a token in `tokendir`;
    returns (SOFTHSM2_CONF path, PIN file path)."""
    os.makedirs(tokendir, exist_ok=True)
    conf = os.path.join(folder, "softhsm2.conf")
    write(conf, f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "e2ebk-vault", "--pin", "1234",
                    "--so-pin", "5678"], env={**os.environ, "SOFTHSM2_CONF": conf}, check=True, capture_output=True)
    pin = os.path.join(folder, "pin")
    write(pin, "1234\n", 0o600)
    return conf, pin


def vault_config(data_dir, pin):
    """A standalone vault on loopback ports chosen by the kernel."""
    return (f'data_dir = "{data_dir}"\n[hsm]\nmodule = "{softhsm_module()}"\ntoken_label = "e2ebk-vault"\n'
            f'pin_file = "{pin}"\n[link]\nlisten = "127.0.0.1:0"\nchatd_keys = ["{LINK_KEY}"]\n'
            '[admin]\nlisten = "127.0.0.1:0"\n')


def init_and_serve(binary, config, init_args, env, folder, wrapper=(), what=""):
    """Runs `binary --config CONFIG init ...`, then `serve` until it prints
    its listening line, then stops it; both through `wrapper` (a command
    prefix). Failures are recorded."""
    name = os.path.basename(binary)
    cfg = ["--config", config]
    out = subprocess.run([*wrapper, binary, *cfg, "init", *init_args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{name} init {what}: {out.stderr.strip()}")
        return
    log = os.path.join(folder, "serve.log")
    with open(log, "w") as err:
        proc = subprocess.Popen([*wrapper, binary, *cfg, "serve"], env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if '"listening"' in line:
                print(f"ok   {name} serves {what}")
                return
        with open(log) as f:
            fail(f"{name} serve did not start {what}:\n{f.read()}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
