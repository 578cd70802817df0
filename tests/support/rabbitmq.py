"""A vhost of its own on the machine's RabbitMQ for each test stack: its queues, exchanges and
Celery's delayed-delivery topology are never seen by another stack, and go with the vhost."""

from __future__ import annotations

import secrets
import subprocess

RABBITMQ = "127.0.0.1:5672"


def rabbitmqctl(*args: str) -> str:
    out = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"rabbitmqctl {' '.join(args)}: {out.stderr or out.stdout}"
    return out.stdout


class RabbitVhost:
    def __init__(self) -> None:
        self.name = f"longdoc_test_{secrets.token_hex(4)}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"amqp://guest:guest@{RABBITMQ}/{self.name}"

    def queues(self) -> dict[str, dict[str, str]]:
        """Queue name to its type and arguments, as RabbitMQ reports them."""
        rows = rabbitmqctl("list_queues", "-p", self.name, "--no-table-headers", "name", "type",
                           "arguments").splitlines()
        out = {}
        for row in rows:
            name, kind, arguments = (row.split("\t") + ["", ""])[:3]
            out[name] = {"type": kind, "arguments": arguments}
        return out

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
