"""A throwaway PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` from Debian's ``postgresql``
package, in a temporary directory, on a free loopback port, as the ``postgres`` user when running as
root (PostgreSQL refuses root). It can be stopped and started again on the same port, which the
crash tests use to take the database away from a running application.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ports import free_port


def postgres_binary(name: str) -> str | None:
    """The newest installed version of PostgreSQL's program ``name``, or one on PATH."""
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    return found[-1] if found else shutil.which(name)


def _run(command: list[str], timeout: float) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


class PostgresCluster:
    """A PostgreSQL server in a temporary directory: ``start()``, ``stop()``, ``start()`` again (same
    port and data), ``destroy()`` at the end. Durability is off (``fsync``, synchronous commit):
    the tests stop the server, they never crash the machine under it."""

    def __init__(self, max_connections: int = 50) -> None:
        initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("initdb/pg_ctl are missing: apt-get install postgresql")
        self.pg_ctl = pg_ctl
        self.base = Path(tempfile.mkdtemp(prefix="snorky-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.log = self.base / "data", self.base / "server.log"
        self.host = "127.0.0.1"
        self.port = free_port()
        self._started = False
        self.max_connections = max_connections
        try:
            _run(
                [
                    *self.as_user,
                    initdb,
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                120,
            )
        except Exception:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    def start(self, wal_level: str = "logical", **settings: str) -> None:
        """Starts the server and waits until it accepts connections (with ``wal_level = logical``
        unless told otherwise: logical delivery reads the WAL; other ``settings`` as given).

        A first start whose port was taken in the moment between picking it and binding it tries
        again on another; a restart keeps its port, which the crash tests rely on."""
        for attempt in range(3):
            try:
                self._start_once(wal_level, settings)
            except RuntimeError:
                port_taken = self.log.exists() and "could not bind" in self.log.read_text()
                if self._started or not port_taken or attempt == 2:
                    raise
                self.log.unlink()
                self.port = free_port()
            else:
                self._started = True
                return

    def _start_once(self, wal_level: str, settings: dict[str, str]) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses={self.host} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections} "
            f"-c wal_level={wal_level} -c wal_writer_delay=10ms"
        )
        options += "".join(f" -c {name}={value}" for name, value in settings.items())
        try:
            _run(
                [
                    *self.as_user,
                    self.pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ],
                90,
            )
        except Exception:
            if self.log.exists():
                print(self.log.read_text())
            raise

    def stop(self, mode: str = "fast") -> None:
        """Stops the server: ``fast`` ends every session (what an operator's restart does),
        ``immediate`` quits without a clean shutdown."""
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def destroy(self) -> None:
        """Stops the server and removes its directory."""
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
