"""Filters of the image role's pull-through cache (``ascend_fleet.image_cache``)."""

from __future__ import annotations

import sys

from ansible.errors import AnsibleFilterError

try:
    from ascend_fleet.image_cache import CacheError, cache_repository, cache_settings, registry_trusted
except ImportError as exc:
    raise AnsibleFilterError(
        f"the Python package ascend_fleet is not installed for {sys.executable} "
        "(the Python that runs Ansible): run scripts/setup.sh, or pip install -e . in the checkout"
    ) from exc


def fleet_image_cache(plan, **settings):
    """The cache's host, address, remote and image from the image_cache_* variables; a wrong
    value gives {"enabled": False, "error": message} for the role to fail with."""
    try:
        return cache_settings(plan, **settings)
    except CacheError as exc:
        return {"enabled": False, "error": str(exc)}


class FilterModule:
    def filters(self):
        return {
            "fleet_image_cache": fleet_image_cache,
            "fleet_image_cache_repository": cache_repository,
            "fleet_registry_trusted": registry_trusted,
        }
