"""The request serializer's fields are copied shallowly (ShallowCopyField): each serializer still
gets fields of its own, and concurrent requests do not see each other's."""

from __future__ import annotations

import threading
from decimal import Decimal

from orders.serializers import OrderCreateSerializer

LEAF_FIELDS = ("user_id", "email")
ITEM_FIELDS = ("product_id", "product_name", "quantity", "price")


def body(n: int) -> dict:
    return {
        "user_id": f"user-{n}",
        "email": f"user{n}@example.com",
        "items": [{"product_id": f"p{n}", "product_name": "Widget", "quantity": n % 5 + 1, "price": Decimal("9.99")}],
    }


def item_fields(serializer):
    return serializer.fields["items"].child.fields


def test_each_serializer_binds_fields_of_its_own():
    first, second = OrderCreateSerializer(data=body(1)), OrderCreateSerializer(data=body(2))
    for name in LEAF_FIELDS:
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first and second.fields[name].parent is second
        assert first.fields[name].validators is not second.fields[name].validators
        assert first.fields[name].validators == second.fields[name].validators
    for name in ITEM_FIELDS:
        assert item_fields(first)[name] is not item_fields(second)[name]
        assert item_fields(first)[name].validators is not item_fields(second)[name].validators


def test_the_declared_fields_stay_unbound():
    OrderCreateSerializer(data=body(1)).is_valid(raise_exception=True)
    for name in LEAF_FIELDS:
        declared = OrderCreateSerializer._declared_fields[name]
        assert declared.parent is None and declared.field_name is None


def test_a_copied_field_keeps_its_limits():
    too_long = {**body(1), "user_id": "u" * 65}
    serializer = OrderCreateSerializer(data=too_long)
    assert not serializer.is_valid()
    assert serializer.errors["user_id"][0].code == "max_length"


def test_concurrent_validations_keep_their_own_data():
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def validate(n: int) -> None:
        try:
            for _ in range(50):
                serializer = OrderCreateSerializer(data=body(n))
                serializer.is_valid(raise_exception=True)
                results[n] = serializer.validated_data
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=validate, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for n, data in results.items():
        assert data["user_id"] == f"user-{n}"
        assert data["items"][0]["product_id"] == f"p{n}"
        assert data["items"][0]["quantity"] == n % 5 + 1
