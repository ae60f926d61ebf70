"""A loopback OpenAI-compatible completions server for the tests: it answers each request after
``delay`` seconds with ``n`` choices and counts the most requests it held at once."""
import http.server
import json
import threading
import time


class SlowUpstream:
    def __init__(self, delay: float, text=lambda body, i: f" title {i}", token_logprobs=(-0.5,)):
        lock, self.in_flight, self.most = threading.Lock(), 0, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.in_flight += 1
                    outer.most = max(outer.most, outer.in_flight)
                time.sleep(delay)
                with lock:
                    outer.in_flight -= 1
                data = json.dumps({"choices": [{"text": text(body, i), "finish_reason": "stop",
                                                "logprobs": {"token_logprobs": list(token_logprobs)}}
                                               for i in range(body["n"])]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
