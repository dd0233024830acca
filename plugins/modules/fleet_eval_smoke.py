#!/usr/bin/python
"""Ansible module: one chat request through every path of a deployment (run on the entry host).

A PD path is sent the way the PD proxy sends a request: the prefill leg to one prefill rank
(``kv_transfer_params.do_remote_decode``), then the decode leg, with the prefill's
``kv_transfer_params``, to one decode rank, so each prefill x decode pair's KV transfer is
exercised on its own instead of behind the proxy's load balancing. A single-node path is one
request to one API port. Never changes anything.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: fleet_eval_smoke
short_description: One request through every prefill x decode path (or every API port)
description:
  - A PD path is sent the way the PD proxy sends a request, the prefill leg to one prefill
    rank, then the decode leg with the prefill's kv_transfer_params to one decode rank, so
    each prefill x decode pair's KV transfer is exercised on its own.
  - A single-node path is one request to one API port. Changes nothing.
options:
  paths: {type: list, elements: dict, required: true, description: "[{name, prefill, decode}] or [{name, url}]"}
  model: {type: str, required: true, description: served model name}
  max_tokens: {type: int, default: 16, description: max_tokens of each request}
  timeout: {type: int, default: 120, description: seconds per request}
  api_key: {type: str, no_log: true, description: bearer token of the engines, if any}
"""
RETURN = r"""
paths: {type: list, description: "per path: name, ok, error, seconds, answer (first words)"}
failed_paths: {type: list, description: names of the paths that failed}
"""

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post(url: str, body: dict, timeout: int, api_key: str | None, request_id: str) -> dict:
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                     headers)
    try:
        with OPENER.open(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise RuntimeError(f"{url} answered HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{url}: {exc}") from None


def one(path: dict, model: str, max_tokens: int, timeout: int, api_key: str | None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "Who are you?"}],
            "max_tokens": max_tokens, "temperature": 0}
    request_id = uuid.uuid4().hex
    began = time.monotonic()
    result = {"name": path["name"], "ok": False, "error": None}
    try:
        if path.get("prefill"):
            leg = dict(body, max_tokens=1, stream=False,
                       kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False,
                                           "remote_engine_id": None, "remote_block_ids": None,
                                           "remote_host": None, "remote_port": None})
            first = post(path["prefill"], leg, timeout, api_key, request_id)
            params = first.get("kv_transfer_params")
            if not params:
                raise RuntimeError(f"{path['prefill']} (prefill) answered without "
                                   "kv_transfer_params")
            answer = post(path["decode"], dict(body, kv_transfer_params=params), timeout,
                          api_key, request_id)
        else:
            answer = post(path["url"], body, timeout, api_key, request_id)
        choices = answer.get("choices") or []
        if not choices:
            raise RuntimeError(f"answer without choices: {json.dumps(answer)[:200]}")
        text = (choices[0].get("message") or {}).get("content") or ""
        result.update(ok=True, answer=" ".join(text.split()[:8]))
    except RuntimeError as exc:
        result["error"] = str(exc)
    result["seconds"] = round(time.monotonic() - began, 3)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={"paths": {"type": "list", "elements": "dict", "required": True},
                       "model": {"type": "str", "required": True},
                       "max_tokens": {"type": "int", "default": 16},
                       "timeout": {"type": "int", "default": 120},
                       "api_key": {"type": "str", "no_log": True}},
        supports_check_mode=True)
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, paths=[], failed_paths=[], skipped=True)
    results = [one(path, p["model"], p["max_tokens"], p["timeout"], p["api_key"])
               for path in p["paths"]]
    module.exit_json(changed=False, paths=results,
                     failed_paths=[r["name"] for r in results if not r["ok"]])


if __name__ == "__main__":
    main()
