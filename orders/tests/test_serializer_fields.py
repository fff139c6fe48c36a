"""The request serializer's fields are copied shallowly (ShallowCopyField): each serializer still
gets fields of its own, and concurrent requests do not see each other's. A well-formed request is
validated by the declared fields directly (DeclaredFieldsFastPath), and only such a request."""

from __future__ import annotations

import threading
from decimal import Decimal

from rest_framework import serializers

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


def test_a_well_formed_order_is_validated_without_copying_the_fields():
    serializer = OrderCreateSerializer(data=body(3))

    assert serializer.is_valid(), serializer.errors
    assert "fields" not in serializer.__dict__  # the cached property was never computed
    assert serializer.validated_data["items"][0]["price"] == Decimal("9.99")


def test_a_bad_order_gets_drfs_own_errors():
    bad = {**body(1), "email": "not-an-email", "items": [{**body(1)["items"][0], "quantity": 0}]}
    serializer = OrderCreateSerializer(data=bad)

    assert not serializer.is_valid()
    assert serializer.errors["email"][0].code == "invalid"
    assert serializer.errors["items"][0]["quantity"][0].code == "min_value"


def test_a_serializer_with_its_own_hooks_is_validated_by_drf():
    class WithFieldHook(OrderCreateSerializer):
        def validate_user_id(self, value):
            raise serializers.ValidationError("refused by the hook")

    class WithObjectHook(OrderCreateSerializer):
        def validate(self, attrs):
            return {**attrs, "seen_by_validate": True}

    hooked = WithFieldHook(data=body(1))
    assert not hooked.is_valid()
    assert hooked.errors["user_id"] == ["refused by the hook"]
    validated = WithObjectHook(data=body(1))
    assert validated.is_valid() and validated.validated_data["seen_by_validate"] is True
