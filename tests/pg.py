"""A throwaway PostgreSQL cluster for tests: Debian's binaries, run as the postgres user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

from search.experiment import free_port


def find_pg_bin() -> str | None:
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(path, "initdb")):
            return path
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Cluster:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; ``stop()`` removes it."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
        self.dir = tempfile.mkdtemp(prefix="hwnas-pg-")
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        self._as_postgres = os.geteuid() == 0  # the server refuses to run as root
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(["initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"])
        self.start()

    def _run(self, argv: list[str]) -> None:
        cmd = [os.path.join(self.bin, argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.dir)

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(["pg_ctl", "-D", self.data, "-o", opts, "-l",
                   os.path.join(self.dir, "log"), "-w", "start"])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not start")

    def stop(self, remove: bool = True) -> None:
        try:
            self._run(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        finally:
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server; returns its URL."""
    import psycopg

    base = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}"


def _main(argv: list[str]) -> int:
    """``python -m tests.pg start`` prints shell exports for a new cluster;
    ``python -m tests.pg stop DIR`` stops and removes it (used by .ci/run)."""
    import sys

    if argv[:1] == ["start"]:
        cluster = Cluster()
        print(f"export HWNAS_TEST_PG_URL={cluster.url} HWNAS_TEST_PG_DIR={cluster.dir}")
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        bin_dir = find_pg_bin()
        data = os.path.join(argv[1], "data")
        cmd = [os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(argv[1], ignore_errors=True)
        return 0
    print("usage: python -m tests.pg start | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
