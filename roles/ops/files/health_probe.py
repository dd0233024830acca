"""Ask every URL given on the command line for HTTP 200, all at once; print JSON.

  python3 -c "$(cat health_probe.py)" [--key-stdin] TIMEOUT URL [URL ...]

Prints {"URL": STATUS, ...}: the HTTP status, or -1 when there is no answer. Read-only.
With --key-stdin, standard input holds the service's key (fleet_api_key): every request carries
`Authorization: Bearer KEY`; the key never appears on the command line or in the output.
"""

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request


def probe(url, timeout, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError, ValueError):
        return -1


def main():
    args = sys.argv[1:]
    key = ""
    if args and args[0] == "--key-stdin":  # only then is stdin read (it may stay open otherwise)
        args, key = args[1:], sys.stdin.read().strip()
    timeout, urls = float(args[0]), args[1:]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(urls) or 1)) as pool:
        futures = {url: pool.submit(probe, url, timeout, key) for url in urls}
    print(json.dumps({url: future.result() for url, future in futures.items()}))


main()
