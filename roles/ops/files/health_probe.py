"""Ask every URL given on the command line for HTTP 200, all at once; print JSON.

  python3 -c "$(cat health_probe.py)" TIMEOUT URL [URL ...]

Prints {"URL": STATUS, ...}: the HTTP status, or -1 when there is no answer. Read-only.
"""

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request


def probe(url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError, ValueError):
        return -1


def main():
    timeout, urls = float(sys.argv[1]), sys.argv[2:]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(urls) or 1)) as pool:
        futures = {url: pool.submit(probe, url, timeout) for url in urls}
    print(json.dumps({url: future.result() for url, future in futures.items()}))


main()
