"""The prompting study's hosted-model path (--model api:MODEL) against an OpenAI-compatible server these tests start
on the loopback address: the request's shape, retries, the cache, the key's handling, a whole single-stimulus run.

    python -m pytest tests/test_api_model.py -q
"""
import base64
import io
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iqa_vlm import api_model  # noqa: E402
from iqa_vlm.studies import prompting  # noqa: E402

KEY = "sk-test-0123456789abcdef-never-to-be-seen"


class Server:
    """A chat-completions endpoint: records each request, answers "Score: N" (N from the first image's mean), and
    fails the first `fail` requests with `status`."""

    def __init__(self, fail=0, status=429):
        self.requests, self.fail, self.status = [], fail, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(outer.status)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "injected"}}')
                    return
                url = next(p["image_url"]["url"] for p in body["messages"][0]["content"] if p["type"] == "image_url")
                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                answer = f"The image looks fine. Score: {int(np.asarray(img).mean() * 100 / 255)}"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}],
                                   "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr(api_model, "BACKOFF", 0.01)
    s = Server()
    yield s
    s.close()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8), "RGB").save(p)
        paths.append(str(p))
    return paths


def test_the_request_is_the_authors_shape(server, images):
    content = [{"type": "text", "text": "Compare these."}, {"type": "image"}, {"type": "image"}]
    api = api_model.ApiModel("api:gpt-4o", server.base)
    assert api.answer([(content, images[:2])]) == ["The image looks fine. Score: " + server_score(images[0])]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 2000 and "temperature" not in body
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"] and parts[0]["text"] == "Compare these."
    for part, path in zip(parts[1:], images):  # in order: RGB PNG bytes, labelled image/jpeg as theirs
        head, data = part["image_url"]["url"].split(",", 1)
        assert head == "data:image/jpeg;base64" and "detail" not in part["image_url"]
        decoded = Image.open(io.BytesIO(base64.b64decode(data)))
        assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), np.asarray(Image.open(path).convert("RGB")))
    api = api_model.ApiModel("api:gpt-4o", server.base, temperature=0.0, detail="low")
    api.answer([(content, images[:2])], max_tokens=64)
    body = server.requests[-1]["body"]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 64 and body["messages"][0]["content"][1]["image_url"]["detail"] == "low"


def server_score(path):
    img = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="png")
    return str(int(np.asarray(Image.open(buf)).mean() * 100 / 255))


@pytest.mark.parametrize("status", [429, 500])
def test_throttling_and_server_errors_are_retried_a_bounded_number_of_times(server, images, status):
    content = [{"type": "text", "text": "Rate."}, {"type": "image"}]
    server.fail, server.status = 2, status
    api = api_model.ApiModel("api:m", server.base, retries=3)
    assert api.answer([(content, images[:1])])[0].startswith("The image")
    assert len(server.requests) == 3  # two refusals, then the answer
    server.fail, n = 100, len(server.requests)
    with pytest.raises(SystemExit, match=f"gave up after 4 attempts \\(last: HTTP {status}: .*injected"):
        api_model.ApiModel("api:m", server.base, retries=3).answer([(content, images[:1])])
    assert len(server.requests) - n == 4


def test_other_client_errors_stop_with_the_servers_message(server, images):
    server.fail, server.status = 1, 400
    with pytest.raises(SystemExit, match="HTTP 400: .*injected"):
        api_model.ApiModel("api:m", server.base).answer([([{"type": "text", "text": "x"}, {"type": "image"}], images[:1])])
    assert len(server.requests) == 1


def test_a_missing_key_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(SystemExit, match="environment variable MY_KEY"):
        api_model.ApiModel("api:m", "http://127.0.0.1:9/v1", key_env="MY_KEY")


def test_a_whole_single_stimulus_run_then_a_rerun_from_the_cache(server, tmp_path, capsys):
    from test_scoring import mini_demo
    mini_demo(tmp_path / "demo")
    out = tmp_path / "out"
    res = prompting.evaluate("single", "standard", model="api:gpt-4o", data=str(tmp_path / "demo"), out=str(out),
                             api_base=server.base)
    sent = len(server.requests)
    assert sent == res["n_queries"] == 6 and res["parsed"] == 6 and res["unparsed"] == 0
    assert res["api_usage"] == {"prompt_tokens": 600, "completion_tokens": 42, "total_tokens": 642, "requests_sent": 6,
                                "cache_hits": 0}
    assert res["per_source"]["demo"]["n_scored"] == 6 and res["max_new_tokens"] == 2000
    rows = [json.loads(l) for l in open(out / "answers_prompting_single_standard.jsonl")]
    assert all(r["parsed"] is not None for r in rows)
    again = prompting.evaluate("single", "standard", model="api:gpt-4o", data=str(tmp_path / "demo"), out=str(out),
                               api_base=server.base)
    assert len(server.requests) == sent and again["api_usage"]["cache_hits"] == 6  # nothing sent the second time
    assert again["per_source"] == res["per_source"]
    prompting.evaluate("single", "standard", model="api:gpt-4o", data=str(tmp_path / "demo"), out=str(out),
                       api_base=server.base, no_cache=True)
    assert len(server.requests) == 2 * sent
    printed = capsys.readouterr()
    for path in out.rglob("*"):  # the key is in no output, no cache file, no log line
        assert not path.is_file() or KEY not in path.read_text(errors="ignore")
    assert KEY not in printed.out + printed.err


def test_the_command_line_takes_the_api_options(server, tmp_path):
    import subprocess
    from test_scoring import mini_demo
    mini_demo(tmp_path / "demo")
    r = subprocess.run([sys.executable, "evaluate.py", "prompting", "--model", "api:gpt-4o", "--api_base", server.base,
                        "--data", str(tmp_path / "demo"), "--out", str(tmp_path / "o"), "--api_concurrency", "2"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "API tokens 642 (6 requests sent, 0 from the cache)" in r.stdout and KEY not in r.stdout + r.stderr


def test_bad_endpoints_and_answers_are_one_line_errors(server, images, tmp_path):
    with pytest.raises(SystemExit, match="expected a URL starting with http"):
        api_model.ApiModel("api:m", "api.openai.com/v1")
    content = [{"type": "text", "text": "Rate."}, {"type": "image"}]
    server.fail, server.status = 1, 429
    server_quota = Server(fail=1, status=429)
    server_quota.close()
    with pytest.raises(SystemExit, match="gave up after 1 attempts \\(last: URLError"):
        api_model.ApiModel("api:m", server_quota.base, retries=0).answer([(content, images[:1])])
    cache = tmp_path / "cache"
    api = api_model.ApiModel("api:m", server.base, cache_dir=str(cache), retries=2)
    assert api.answer([(content, images[:1])])[0].startswith("The image") and len(list(cache.iterdir())) == 1
    other = api_model.ApiModel("api:m", server.base.replace("/v1", "/v2"), cache_dir=str(cache))
    n = len(server.requests)
    other.answer([(content, images[:1])])  # another endpoint: its own cache entry, a request sent
    assert len(server.requests) == n + 1 and len(list(cache.iterdir())) == 2
