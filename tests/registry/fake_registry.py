import base64, http.server, json, os, ssl, sys, threading
port, cert, key, layout, user, pw, log, cuts = sys.argv[1:9]
cuts = int(cuts)
good = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
def blob(d): return open(os.path.join(layout, "blobs", *d.split(":")), "rb").read()
def tags():  # read again on each request: the test adds images as it goes
    index = json.load(open(os.path.join(layout, "index.json")))
    return {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
big = max(json.loads(blob(tags()["bb"]["digest"]))["layers"], key=lambda l: l["size"])["digest"]
seen = {"v2": 0, "storage": 0}
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        auth = self.headers.get("Authorization")
        with open(log, "a") as f:
            f.write(f"{self.path} auth={'yes' if auth else 'no'} range={self.headers.get('Range')}\n")
        parts = self.path.split("/")
        if parts[1] == "storage":
            data = blob(parts[2])
            with lock:
                seen["storage"] += 1; cut = seen["storage"] <= cuts
            rng = self.headers.get("Range")
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = data[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data)-1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut:  # half of what was asked, then the connection drops
                self.wfile.write(body[: len(body) // 2]); self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)
            return
        if auth != good:
            return self.reply(401, b"{}", [("WWW-Authenticate", 'Basic realm="fake"')])
        if self.path == "/v2/":
            return self.reply(200, b"{}")
        ref = parts[-1]
        if parts[-2] == "manifests":
            m = tags().get(ref) or {"digest": ref, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
            return self.reply(200, blob(m["digest"]), [("Content-Type", m["mediaType"])])
        if ref == big:
            with lock:
                seen["v2"] += 1; first = seen["v2"] == 1
            if first:
                return self.reply(503, b"busy", [("Retry-After", "1")])
            return self.reply(307, b"", [("Location", f"https://localhost:{port}/storage/{ref}")])
        return self.reply(200, blob(ref))
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
