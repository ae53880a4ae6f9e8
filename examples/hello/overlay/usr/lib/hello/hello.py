#!/usr/bin/python3
"""hello: a small real service. GET / greets, GET /health reports the running image."""

import http.server
import json
import os


def image() -> dict[str, str]:
    fields = {}
    with open("/usr/lib/os-release") as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            fields[key] = value.strip('"')
    return {"id": fields.get("IMAGE_ID", ""), "version": fields.get("IMAGE_VERSION", "")}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = json.dumps({"status": "ok", **image()}).encode()
            kind = "application/json"
        elif self.path == "/":
            body = b"hello from an appsdk appliance\n"
            kind = "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(fmt % args, flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("HELLO_PORT", "8080"))
    http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()
