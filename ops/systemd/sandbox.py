#!/usr/bin/env python3
"""Starts chatd and hsm-vault under the part of their units' sandbox that
can be built without systemd (ops/check-deploy runs it as root).

CI has no systemd as PID 1, so the units cannot be started for real. This
runs each binary the way its unit would, as far as plain tools allow:

- as an unprivileged user (nobody), with no capabilities in any set and
  no_new_privs (User=, CapabilityBoundingSet=, NoNewPrivileges=);
- in its own mount namespace with the whole file system read-only except
  its state folder (ProtectSystem=strict, StateDirectory=,
  ReadWritePaths=), an empty /tmp (PrivateTmp=) and empty home folders
  (ProtectHome=);
- with the unit's LimitCORE=, LimitNOFILE= and UMask= (read from the unit
  file), and then checks that what it created is private.

It fails if a binary does not serve under that, or leaves a file others can
read. The rest of the sandbox (SystemCallFilter=, MemoryDenyWriteExecute=,
RestrictAddressFamilies=, PrivateDevices=, ProtectKernel*=, ...) needs
systemd itself; `systemd-analyze security` checks that it is configured.

The sandbox hides /tmp, /home and /root, so a checkout in any of them
(CI clones to /tmp) cannot be run from where it is: the binaries are
copied into a fresh folder under /var/tmp with the state folders, and that
folder is removed at the end.

Usage: sandbox.py BIN_DIR
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import checks  # noqa: E402  (ops/checks.py)

HERE = os.path.dirname(os.path.abspath(__file__))
NOBODY = 65534


def unit_settings(name):
    settings = {}
    with open(os.path.join(HERE, name)) as f:
        for line in f:
            m = re.match(r"^(\w+)=(.*)$", line.strip())
            if m:
                settings[m.group(1)] = m.group(2)
    return settings


def sandbox(unit, writable):
    """The command prefix that starts a process under `unit`'s sandbox,
    with `writable` the only writable folder."""
    s = unit_settings(unit)
    assert s.get("NoNewPrivileges") == "yes" and s.get("CapabilityBoundingSet") == "", unit
    assert s.get("ProtectSystem") == "strict" and s.get("PrivateTmp") == "yes", unit
    limits = []
    if "LimitCORE" in s:
        limits.append(f"--core={s['LimitCORE']}")
    if "LimitNOFILE" in s:
        limits.append(f"--nofile={s['LimitNOFILE']}")
    umask = s.get("UMask", "0022")
    mounts = (
        f"mount --bind {writable} {writable} && "
        "mount -t tmpfs -o mode=1777 tmpfs /tmp && "
        "for h in /home /root; do [ -d $h ] && mount -t tmpfs -o mode=0755 tmpfs $h; done; "
        "mount -o remount,bind,ro / && "
        # What the unit runs, as the unit's user, with nothing left to gain.
        f'umask {umask} && exec prlimit {" ".join(limits)} -- '
        f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --no-new-privs "
        "--inh-caps=-all --bounding-set=-all -- \"$@\""
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sandbox"]


def private_files(folder):
    """Files and folders under `folder` that group or others can read."""
    loose = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            if os.lstat(p).st_mode & 0o077:
                loose.append(f"{p} ({os.lstat(p).st_mode & 0o777:o})")
    return loose


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="e2ebk-sandbox-", dir="/var/tmp")
    try:
        run_all(os.path.abspath(sys.argv[1]), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checks.finish("systemd sandbox (without systemd)")


def run_all(bin_dir, work):
    os.chmod(work, 0o755)
    bins = os.path.join(work, "bin")
    os.makedirs(bins)
    for name in ("chatd", "hsm-vault"):
        shutil.copy2(os.path.join(bin_dir, name), bins)
    bin_dir = bins
    env = {k: v for k, v in os.environ.items() if not (k.startswith("CHATD_") or k.startswith("HSM_VAULT_"))}
    env.pop("RUST_LOG", None)

    # chatd: its state folder is data/; config beside it, read-only.
    cdir = os.path.join(work, "chatd")
    data = os.path.join(cdir, "data")
    os.makedirs(data)
    checks.write(os.path.join(cdir, "chatd.toml"), checks.chatd_config("data"))
    os.chown(data, NOBODY, NOBODY)
    os.chmod(cdir, 0o755)
    checks.init_and_serve(os.path.join(bin_dir, "chatd"), os.path.join(cdir, "chatd.toml"), [], env, cdir,
                          wrapper=sandbox("chatd@.service", data), what="under chatd@.service's sandbox")
    for f in private_files(data):
        checks.fail(f"chatd left {f} readable by others under UMask")

    # hsm-vault: its state folder holds the store and, here, the token.
    vdir = os.path.join(work, "vault")
    state = os.path.join(vdir, "state")
    os.makedirs(state)
    os.chmod(vdir, 0o755)
    conf, pin = checks.softhsm_token(os.path.join(state, "tokens"), vdir)
    checks.write(os.path.join(vdir, "vault.toml"), checks.vault_config("state/data", pin))
    for root, dirs, files in os.walk(state):
        for p in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(p, NOBODY, NOBODY)
    os.chown(pin, NOBODY, NOBODY)
    checks.init_and_serve(os.path.join(bin_dir, "hsm-vault"), os.path.join(vdir, "vault.toml"),
                          ["--fleet-id", "sandbox"], {**env, "SOFTHSM2_CONF": conf}, vdir,
                          wrapper=sandbox("hsm-vault.service", state), what="under hsm-vault.service's sandbox")
    for f in private_files(os.path.join(state, "data")):
        checks.fail(f"hsm-vault left {f} readable by others under UMask")


if __name__ == "__main__":
    main()
