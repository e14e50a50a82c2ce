"""A deployment's secrets on disk: the bootstrap admin API key and the NATS users' passwords.

``flowrelay up`` creates them on first start in ``<data dir>/secrets`` (``flowrelay
secrets init DIR`` does the same for compose or any other deployment). Every file is mode
0600 in a 0700 directory, written once and never logged:

    secrets/
      admin.key                  admin API key of tenant "default" (FLOWRELAY_BOOTSTRAP_KEY_FILE)
      nats/api.password          one file per NATS user; services read theirs through
      nats/executor.password     FLOWRELAY_NATS_PASSWORD_FILE
      nats/suggester.password
      nats/operator.password     for people and tests: unrestricted; never give it to a service
      nats/tenant-<T>.password   read-only subscriber of tenant T (flowrelay nats-user)
      nats/client-<T>.password   tenant T's backend over NATS: reader + submit and cancel
      nats/route.password        what cluster nodes authenticate their routes with (not a
                                 client user: only clustered deployments create it)

The NATS user name is the file name without ``.password``; its role follows from it.

For containers (``flowrelay secrets init --container-readable``) the files are mode 0644
in the 0700 directory instead: compose mounts each one into its own service's container
alone, where the service's user (not the file's owner on the host) has to read it, and on
the host the directory still keeps everyone but its owner out.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flowrelay.natsconfig import ROUTE_USER, NatsUser, Role
from flowrelay_api.auth.keys import new_key
from flowrelay_contracts.tenants import check_tenant

#: NATS users every deployment has.
SERVICE_USERS = (Role.API, Role.EXECUTOR, Role.SUGGESTER, Role.OPERATOR)

_PASSWORD_SUFFIX = ".password"

#: Mode of every secret file: the owner's alone, unless prepared for containers.
FILE_MODE = 0o600

#: Mode for files that compose mounts into containers one by one (see the module docstring).
CONTAINER_FILE_MODE = 0o644


def _write_new(path: Path, text: str, mode: int = FILE_MODE) -> bool:
    """Create ``path`` with ``mode`` unless it exists; True if created now."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.chmod(path, mode)  # the umask may have taken bits away
    return True


@dataclass(frozen=True)
class Secrets:
    """The secrets directory of one deployment."""

    root: Path
    file_mode: int = FILE_MODE

    @classmethod
    def ensure(cls, root: Path, *, file_mode: int = FILE_MODE) -> Secrets:
        """Create whatever is missing (never replacing what exists) and return the directory.

        Files that exist get ``file_mode`` too, so preparing a directory for containers (or
        back) needs no second tool.
        """
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "nats").mkdir(mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        store = cls(root, file_mode)
        _write_new(store.admin_key_file, new_key()[1], file_mode)
        for role in SERVICE_USERS:
            _write_new(store.password_file(role.value), secrets.token_urlsafe(32), file_mode)
        for file in [store.admin_key_file, *(root / "nats").glob(f"*{_PASSWORD_SUFFIX}")]:
            os.chmod(file, file_mode)
        return store

    @property
    def admin_key_file(self) -> Path:
        return self.root / "admin.key"

    def admin_key(self) -> str:
        return self.admin_key_file.read_text().strip()

    def password_file(self, user: str) -> Path:
        return self.root / "nats" / f"{user}{_PASSWORD_SUFFIX}"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def add_tenant_user(self, tenant: str, *, submit: bool = False) -> NatsUser:
        """The tenant's reader (or, with ``submit``, client) user, created if missing."""
        role = Role.CLIENT if submit else Role.TENANT
        name = f"{role.value}-{check_tenant(tenant)}"
        _write_new(self.password_file(name), secrets.token_urlsafe(32), self.file_mode)
        return NatsUser(name=name, password=self.password(name), role=role, tenant=tenant)

    def route_password(self) -> str:
        """The cluster routes' password (created if missing); ``users`` leaves it out."""
        _write_new(self.password_file(ROUTE_USER), secrets.token_urlsafe(32), self.file_mode)
        return self.password(ROUTE_USER)

    def users(self) -> list[NatsUser]:
        """Every NATS user with a password file here."""
        found = []
        for file in sorted((self.root / "nats").glob(f"*{_PASSWORD_SUFFIX}")):
            name = file.name[: -len(_PASSWORD_SUFFIX)]
            role, _, tenant = name.partition("-")
            if name in {r.value for r in SERVICE_USERS}:
                found.append(NatsUser(name=name, password=self.password(name), role=Role(name)))
            elif role in (Role.TENANT.value, Role.CLIENT.value) and tenant:
                found.append(NatsUser(name=name, password=self.password(name), role=Role(role), tenant=check_tenant(tenant)))
        return found

    def service_env(self, role: Role) -> dict[str, str]:
        """Environment that makes a service connect as its own NATS user."""
        env = {"FLOWRELAY_NATS_USER": role.value, "FLOWRELAY_NATS_PASSWORD_FILE": str(self.password_file(role.value))}
        if role == Role.API:
            env["FLOWRELAY_BOOTSTRAP_KEY_FILE"] = str(self.admin_key_file)
        return env
