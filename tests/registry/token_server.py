import base64, http.server, json, os, subprocess, sys, time, urllib.parse
port, key, cert, user, pw, log = sys.argv[1:7]
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                     capture_output=True, check=True).stdout
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
good = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        auth = self.headers.get("Authorization")
        if auth is not None and auth != good:
            self.send_response(401); self.end_headers(); return
        allowed = ["pull", "push"] if auth else ["pull"]
        access = []
        for s in q.get("scope", []):
            kind, rest = s.split(":", 1)
            name, acts = rest.rsplit(":", 1)
            access.append({"type": kind, "name": name,
                           "actions": [a for a in acts.split(",") if a in allowed]})
        now = int(time.time())
        head = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": "warren-test-issuer", "sub": user if auth else "",
                  "aud": "warren-test-registry", "exp": now + 600, "nbf": now - 60,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = b64(json.dumps(head).encode()) + "." + b64(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key],
                             input=signing.encode(), capture_output=True, check=True).stdout
        token = signing + "." + b64(sig)
        body = json.dumps({"token": token, "expires_in": 600}).encode()
        with open(log, "a") as f:
            f.write(("user" if auth else "anonymous") + " " + " ".join(q.get("scope", [])) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), H).serve_forever()
