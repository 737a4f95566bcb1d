"""ServiceAccount tokens checked by a TokenReview at the API double, through the activator's reviewer,
with the permission table the activator's RBAC is generated from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from kubeapi import KubeApiDouble
from support.cluster import cluster
from support.cluster import service_account_token as token_for
from support.identity import SigningKey

from controller.api import types
from controller.app.activator import token_reviewer
from controller.identity.authenticate import Authenticator
from controller.identity.tokens import Reason, Refused, Verified, default_audience
from controller.runtime.kubernetes import client as kc
from controller.runtime.kubernetes import permissions

pytestmark = pytest.mark.kubernetes

KEY = "shop/orders"
AUDIENCE = default_audience(KEY)
IDENTITIES = (types.IdentitySpec(role="orders_api", service_account=types.ServiceAccountRef("shop", "api")),)


@pytest.fixture
def double() -> Iterator[KubeApiDouble]:
    with cluster() as kube:
        for name in ("api", "web"):
            kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": "shop"},
                }
            )
        yield kube


def authenticator(double: KubeApiDouble, clock: list[Any] | None = None) -> Authenticator:
    kube = kc.Kube(double.api_client(), permissions.ACTIVATOR)
    if clock is None:
        return Authenticator(reviewer=token_reviewer(kube))
    return Authenticator(reviewer=token_reviewer(kube), clock=lambda: clock[0])


def reviews(double: KubeApiDouble) -> int:
    return len(double.requests_matching(verb="create", resource="tokenreviews.authentication.k8s.io"))


async def test_a_bound_service_account_logs_in_and_is_reviewed_once(double: KubeApiDouble) -> None:
    check = authenticator(double)
    token = token_for(double, "api", AUDIENCE)
    for _ in range(3):
        result = await check.authenticate(KEY, IDENTITIES, token, "orders_api")
        assert isinstance(result, Verified)
        assert result.identity == "system:serviceaccount:shop:api"
    assert reviews(double) == 1
    request = double.requests_matching(resource="tokenreviews.authentication.k8s.io")[0]
    assert request.path == "/apis/authentication.k8s.io/v1/tokenreviews"


async def test_each_refusal_of_a_service_account_token_says_why(double: KubeApiDouble) -> None:
    check = authenticator(double)
    unbound = await check.authenticate(KEY, IDENTITIES, token_for(double, "web", AUDIENCE), "orders_api")
    assert unbound == Refused(Reason.NOT_BOUND, "system:serviceaccount:shop:web")
    default = token_for(double, "api")  # the API server's own audience, as a token mounted by default
    assert await check.authenticate(KEY, IDENTITIES, default, "orders_api") == Refused(
        Reason.WRONG_AUDIENCE, "system:serviceaccount:shop:api"
    )
    other_db = token_for(double, "api", default_audience("shop/invoices"))
    result = await check.authenticate(KEY, IDENTITIES, other_db, "orders_api")
    assert isinstance(result, Refused)
    assert result.reason is Reason.WRONG_AUDIENCE
    # Claims the API server would sign, but signed by someone else's key.
    claims = jwt.decode(token_for(double, "api", AUDIENCE), options={"verify_signature": False})
    forged = jwt.encode(claims, SigningKey().private, algorithm="RS256", headers={"kid": "double"})
    result = await check.authenticate(KEY, IDENTITIES, forged, "orders_api")
    assert isinstance(result, Refused)
    assert result.reason is Reason.BAD_SIGNATURE
    # The ServiceAccount deleted and made again: its old tokens name a uid that is gone.
    stale = token_for(double, "api", AUDIENCE)
    double.delete("serviceaccounts", "api", "shop")
    double.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "api", "namespace": "shop"}}
    )
    result = await check.authenticate(KEY, IDENTITIES, stale, "orders_api")
    assert isinstance(result, Refused)
    assert result.reason is Reason.BAD_SIGNATURE


async def test_an_expired_service_account_token_is_refused_as_expired(double: KubeApiDouble) -> None:
    from datetime import timedelta

    from controller.api import units

    now = units.now_utc()
    clock = [now]
    check = authenticator(double, clock)
    token = token_for(double, "api", AUDIENCE, seconds=600)
    assert isinstance(await check.authenticate(KEY, IDENTITIES, token, "orders_api"), Verified)
    later = now + timedelta(hours=1)
    clock[0] = later
    double.api.tokens.clock = later.timestamp
    result = await check.authenticate(KEY, IDENTITIES, token, "orders_api")
    assert result == Refused(Reason.EXPIRED, "system:serviceaccount:shop:api")
    assert reviews(double) == 2  # the cache let it go at its exp, and the API server said no


async def test_an_api_server_that_cannot_answer_is_not_the_clients_fault(double: KubeApiDouble) -> None:
    double.fail_requests(503, resource="tokenreviews.authentication.k8s.io")
    result = await authenticator(double).authenticate(
        KEY, IDENTITIES, token_for(double, "api", AUDIENCE), "orders_api"
    )
    assert result == Refused(Reason.REVIEW_FAILED)


def test_the_activator_may_create_token_reviews_and_nothing_else_of_authentication() -> None:
    assert permissions.allows(permissions.ACTIVATOR, "authentication.k8s.io", "tokenreviews", "create")
    for verb in ("get", "list", "watch", "delete", "update", "patch"):
        assert not permissions.allows(permissions.ACTIVATOR, "authentication.k8s.io", "tokenreviews", verb)
    assert not any(r.group == "authentication.k8s.io" for r in permissions.OPERATOR)
    assert not any(r.resource.startswith("serviceaccounts") for r in permissions.ACTIVATOR)
