"""A hosted model behind an OpenAI-compatible chat-completions endpoint (GPT-4V/4o, or vLLM serving an open VLM), for
the prompting study: `--model api:MODEL --api_base URL`.

Requests are built as the study's authors sent them to GPT-4V (TianheWu/MLLMs-for-IQA, iqa_models/gpt4v.py): one user
message, its text first and then the images in order, each converted to RGB, saved as PNG and sent base64 in a data URL
labelled image/jpeg (their label: servers decode the bytes, not the label); max_tokens 2000; no temperature and no
`detail` (the API's defaults) unless --api_temperature / --api_detail are given.

The key is read from the environment (OPENAI_API_KEY, or the variable --api_key_env names); it is sent in the
Authorization header and never printed, logged, cached or written to an output. Responses that hold an answer are
cached under the run's output folder (api_cache/, one JSON file per request, named by the SHA-256 of the endpoint,
model, texts, image files' SHA-256 and parameters), so a re-run or a resumed run sends only what is not yet answered;
--no_cache true sends everything. 429, 5xx, timeouts and
dropped connections are retried with exponential backoff and full jitter, at most --api_retries times; any other 4xx
(and a 429 for an exhausted quota) stops the run with the server's message. At most --api_concurrency requests are in flight.

A small client on the standard library (urllib, a thread pool) rather than the openai package: one endpoint and one
request shape, while the cache, the retry policy and the key's handling must be this study's own either way, and the
repo gains no dependency.
"""
import base64
import hashlib
import io
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from iqa_vlm.common import atomic_write_json
from iqa_vlm.data import file_digest, load_image

PREFIX = "api:"
AUTHORS_MAX_TOKENS = 2000  # their payload's max_tokens
RETRY_STATUS = {429, 500, 502, 503, 504}
BACKOFF = 1.0  # seconds: the first retry waits up to this, each next one up to twice as long (capped at 60)


def is_api(model):
    return isinstance(model, str) and model.startswith(PREFIX)


def encode_image(path):
    """An image file -> the data URL the authors' code sends: RGB, PNG bytes, base64, labelled image/jpeg. Read as the
    local models read it (data.load_image: EXIF orientation applied, 16-bit scaled)."""
    buf = io.BytesIO()
    load_image(path).save(buf, format="png")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")



def to_request(model, content, image_paths, max_tokens, temperature=None, detail=None):
    """A prompt of the study ([{"type": "text"|"image", ...}] in order, and its image paths) -> the request body."""
    parts, images = [], iter(image_paths)
    for item in content:
        if item["type"] == "text":
            parts.append({"type": "text", "text": item["text"]})
        else:
            url = {"url": encode_image(next(images))}
            if detail:
                url["detail"] = detail
            parts.append({"type": "image_url", "image_url": url})
    body = {"model": model, "messages": [{"role": "user", "content": parts}], "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    return body


class ApiError(RuntimeError):
    pass


class ApiModel:
    """answer(prompts) -> one answer per prompt, through the endpoint, the cache and the retry policy above; usage()
    -> the token counts summed over the responses (cached ones included, each once)."""

    def __init__(self, name, api_base, key_env="OPENAI_API_KEY", cache_dir=None, concurrency=4, retries=6,
                 timeout=120.0, temperature=None, detail=None):
        if not api_base:
            raise SystemExit("--model api:MODEL needs --api_base URL (e.g. https://api.openai.com/v1 or a vLLM server's)")
        if not api_base.startswith(("http://", "https://")):
            raise SystemExit(f"--api_base {api_base}: expected a URL starting with http:// or https:// (e.g. "
                             f"https://api.openai.com/v1)")
        self.model = name[len(PREFIX):] if is_api(name) else name
        self.url = api_base.rstrip("/") + "/chat/completions"
        self._key = os.environ.get(key_env)
        if not self._key:
            raise SystemExit(f"--model {name}: the API key is read from the environment variable {key_env}, which is not "
                             f"set (--api_key_env NAME names another)")
        self.cache_dir, self.concurrency, self.retries = cache_dir, max(1, concurrency), retries
        self.timeout, self.temperature, self.detail, self.backoff = timeout, temperature, detail, BACKOFF
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.sent, self.cached = 0, 0
        self._lock = threading.Lock()

    def _post(self, body):
        import http.client
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self._key}"})
            wait = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read().decode(errors="replace")
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise ApiError(f"{self.url}: a response that is not JSON: {raw[:300]!r}") from None
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS or "insufficient_quota" in text:  # a quota does not come back by waiting
                    raise ApiError(f"{self.url}: HTTP {e.code}: {text}") from None
                why = f"HTTP {e.code}: {text[:200]}"
                wait = e.headers.get("Retry-After") if e.headers else None
            except urllib.error.URLError as e:
                why = f"{type(e).__name__}: {e.reason}"
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                why = f"{type(e).__name__}: {e}"
            if attempt == self.retries:
                raise ApiError(f"{self.url}: gave up after {self.retries + 1} attempts (last: {why})")
            delay = float(wait) if wait and wait.replace(".", "", 1).isdigit() else \
                random.uniform(0, self.backoff * 2 ** attempt)  # full jitter
            time.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")

    def _one(self, prompt, max_tokens):
        """One prompt: its answer from the cache, else from the server. The cache key is the request without its image
        bytes: the endpoint, the model, the texts, each image file's SHA-256 and the parameters; the images are
        encoded only when a request is sent."""
        content, paths = prompt[0], prompt[1]
        desc = {"url": self.url, "model": self.model, "max_tokens": max_tokens, "temperature": self.temperature,
                "detail": self.detail, "content": [item.get("text", "<image>") for item in content],
                "images": [file_digest(p) for p in paths]}
        key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        path = os.path.join(self.cache_dir, key + ".json") if self.cache_dir else None
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                response = json.load(f)
            with self._lock:
                self.cached += 1
        else:
            response = self._post(to_request(self.model, content, paths, max_tokens, self.temperature, self.detail))
            with self._lock:
                self.sent += 1
        try:
            answer = response["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ApiError(f"{self.url}: a response without choices[0].message.content: {str(response)[:300]}") from None
        if path and not os.path.isfile(path):  # only a response that holds an answer is kept
            atomic_write_json(path, response)
        with self._lock:
            for k in self.tokens:
                self.tokens[k] += int((response.get("usage") or {}).get(k) or 0)
        return answer

    def answer(self, prompts, max_tokens=AUTHORS_MAX_TOKENS):
        """prompts: [(content, image paths, ...)] as prompting.build_prompt makes them -> [answer text]."""
        answers = [None] * len(prompts)
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            with tqdm(total=len(prompts), desc=f"api {self.model}", unit="req") as bar:  # its rate: requests/s
                futures = {pool.submit(self._one, p, max_tokens): i for i, p in enumerate(prompts)}
                for fut in as_completed(futures):
                    answers[futures[fut]] = fut.result().strip()
                    bar.update(1)
        except ApiError as e:  # the server's message, with the key blanked should it echo it
            raise SystemExit(f"--model api:{self.model}: {str(e).replace(self._key, '***')}") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return answers

    def usage(self):
        return {**self.tokens, "requests_sent": self.sent, "cache_hits": self.cached}
