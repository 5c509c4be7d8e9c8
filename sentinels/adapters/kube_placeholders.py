"""The `Placeholders` port on Kubernetes: keep the placeholder Deployments exactly as wanted.

The scheduler computes them (`domain.demand.placeholders`); this lists the Deployments
labelled as placeholders in the jobs namespace, creates the missing ones, patches the
ones whose size or replicas changed (a hash annotation says which) and deletes the rest.
Through `KubernetesCluster`'s plumbing, so failures are `Unavailable` with the API's words.
"""

import hashlib
import json

from .kubernetes import KubernetesCluster, _json, is_placeholder

SPEC_HASH = "sentinels.io/spec-hash"
SELECTOR = "app.kubernetes.io/component=placeholder,app.kubernetes.io/part-of=sentinels"


def _hashed(deployment: dict) -> dict:
    digest = hashlib.sha256(json.dumps(deployment["spec"], sort_keys=True).encode()).hexdigest()[:16]
    meta = deployment["metadata"]
    return {**deployment, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}), SPEC_HASH: digest}}}


class KubePlaceholders:
    def __init__(self, cluster: KubernetesCluster):
        self.cluster = cluster

    async def sync(self, wanted: list[dict]) -> dict[str, int]:
        apps, ns, opts = self.cluster._api("AppsV1Api"), self.cluster.cfg.namespace, self.cluster._opts()
        found = await self.cluster._list("listing placeholder Deployments", apps.list_namespaced_deployment, ns,
                                         label_selector=SELECTOR)
        have = {d["metadata"]["name"]: d for d in found if is_placeholder(d)}
        counts = {"created": 0, "updated": 0, "deleted": 0}
        for d in map(_hashed, wanted):
            name = d["metadata"]["name"]
            old = have.pop(name, None)
            if old is None:
                await self.cluster._run(f"creating Deployment {name}",
                                        lambda: _json(apps.create_namespaced_deployment(ns, d, **opts)), exists_ok=True)
                counts["created"] += 1
            elif (old["metadata"].get("annotations") or {}).get(SPEC_HASH) != d["metadata"]["annotations"][SPEC_HASH]:
                patch = {"metadata": {"annotations": d["metadata"]["annotations"]}, "spec": d["spec"]}
                await self.cluster._run(f"updating Deployment {name}",
                                        lambda: _json(apps.patch_namespaced_deployment(name, ns, patch, **opts)))
                counts["updated"] += 1
        for name in have:
            await self.cluster._run(f"deleting Deployment {name}",
                                    lambda: _json(apps.delete_namespaced_deployment(name, ns, **opts)), missing_ok=True)
            counts["deleted"] += 1
        return counts
