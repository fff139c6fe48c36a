"""The admin as an operator meets it: a real server on a free port (pytest-django's live_server),
Debian's chromium driven by Playwright, an operator of the "operators" group logging in through
the login form, cancelling one order and refunding part of another through the order page's forms."""

from __future__ import annotations

import re
import shutil
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect, sync_playwright

from common.admin import OPERATORS, ensure_operator_groups
from devtools.harness.admin_orders import APPROVE, charged_order, give_back_refunds, new_order
from devtools.harness.sample_orders import create_test_order
from orders.models import Order, OrderStatus
from payments import services
from payments.models import Cancellation, Payment, Refund, RefundStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Debian's package, which bin/test installs: Playwright cannot download a browser here.
CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1400, 900
PASSWORD = "operator-password-for-the-browser-test"


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    # The default hasher takes seconds per login here, by design; what is tested is the admin.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@contextmanager
def browser_page():
    """A page of a new headless chromium, WIDTH x HEIGHT. Playwright's sync API runs an event loop
    in this thread, where Django then refuses database calls: arrange before, check after."""
    assert shutil.which("chromium") == CHROMIUM, "Debian's chromium package is missing (bin/test installs it as root)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        finally:
            browser.close()


def operator_alice() -> None:
    """A staff user in the operators group, as README's admin section makes one."""
    ensure_operator_groups()
    user = get_user_model().objects.create_user("alice", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATORS))


def log_in(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/orders/order/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_title(re.compile("Select order to view"))


def open_order(page: Page, order_id) -> None:
    """From the order list, the order's page, by its id's link."""
    page.locator("#nav-sidebar tr.model-order a").click()
    page.get_by_role("link", name=str(order_id)).click()
    expect(page.locator(".field-id .readonly")).to_have_text(str(order_id))


def success(page: Page):
    return page.locator("ul.messagelist li.success")


def test_an_operator_cancels_one_order_and_refunds_part_of_another_through_the_forms(live_server):
    operator_alice()
    unpaid = new_order()
    paid = charged_order(APPROVE)

    with browser_page() as page:
        log_in(page, live_server.url)

        open_order(page, unpaid.pk)
        expect(page.get_by_role("link", name="Refund…")).to_have_count(0)  # nothing was charged
        page.get_by_role("link", name="Cancel order…").click()
        expect(page.locator("#content-main")).to_contain_text("Nothing was charged: the order ends CANCELLED at once.")
        page.get_by_label("Reason").fill("ordered by mistake")
        page.get_by_role("button", name="Cancel the order").click()
        expect(success(page)).to_have_text(f"Cancellation of order {unpaid.pk} recorded: it is CANCELLED")
        expect(page.locator(".field-status .readonly")).to_have_text("Cancelled")
        expect(page.get_by_role("link", name="Cancel order…")).to_have_count(0)
        expect(page.locator("#timeline-group")).to_contain_text("Cancelled by admin:alice: ordered by mistake")

        open_order(page, paid.pk)
        page.get_by_role("link", name="Refund…").click()
        expect(page.get_by_label("Amount")).to_have_value("12.50")  # all that remains, by default
        page.get_by_label("Amount").fill("5.00")
        page.get_by_label("Reason").fill("damaged box")
        page.get_by_role("button", name="Refund", exact=True).click()
        expect(success(page)).to_contain_text(f"Refund of 5.00 requested for order {paid.pk}")
        refunds = page.locator(".field-refunds tbody tr")
        expect(refunds).to_have_count(1)
        expect(refunds.locator("td")).to_have_text([re.compile(r"\d"), "5.00", "Requested", "damaged box", "admin:alice", ""])

        # More than remains: the service refuses, and the operator reads why.
        page.get_by_role("link", name="Refund…").click()
        page.get_by_label("Amount").fill("8.00")
        page.get_by_role("button", name="Refund", exact=True).click()
        expect(page.locator("ul.messagelist li.error")).to_have_text(
            f"Order {paid.pk}: a refund of 8.00 is more than remains of its charge (7.50)"
        )
        expect(refunds).to_have_count(1)

    unpaid.refresh_from_db()
    assert unpaid.status == OrderStatus.CANCELLED
    cancellation = Cancellation.objects.get()
    assert (cancellation.order_id, cancellation.requested_by, cancellation.reason) == (unpaid.pk, "admin:alice", "ordered by mistake")
    refund = Refund.objects.get()
    assert (refund.order_id, refund.amount, refund.status, refund.reason, refund.requested_by) == (
        paid.pk, Decimal("5.00"), RefundStatus.REQUESTED, "damaged box", "admin:alice"
    )
    assert Payment.objects.get(order=paid).refund_reserved == Decimal("5.00")
    assert not Payment.objects.filter(order=unpaid).exists()

    give_back_refunds(paid)  # the pipeline's refund step

    with browser_page() as page:
        log_in(page, live_server.url)
        open_order(page, paid.pk)
        expect(page.locator(".field-status .readonly")).to_have_text("Partially Refunded")
        expect(page.locator(".field-refunds tbody td").nth(2)).to_have_text("Succeeded")
    assert Order.objects.get(pk=paid.pk).status == OrderStatus.PARTIALLY_REFUNDED


def test_the_lists_show_every_column_whole_at_1400_px(live_server):
    operator_alice()
    # Cells that break nowhere on their own: a long user id and email, a long status.
    create_test_order(
        user_id="customer-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789",
        email="firstname.middlename.lastname@orders.subdomain.example-shop.com",
        price="123456.78",
        correlation_id="wide",
    )
    refunded = charged_order(APPROVE)
    services.request_refund(order_id=refunded.pk, requested_by="client 1234567", amount=Decimal("1.00"), source="test")
    give_back_refunds(refunded)
    assert refunded.status == OrderStatus.PARTIALLY_REFUNDED
    services.cancel_order(order_id=charged_order(APPROVE).pk, requested_by="client 1234567", source="test")

    with browser_page() as page:
        log_in(page, live_server.url)
        for path in ("/admin/orders/order/", "/admin/payments/refund/", "/admin/payments/cancellation/"):
            page.goto(f"{live_server.url}{path}")
            headers = page.locator("#result_list thead th")
            expect(headers.last).to_be_visible()
            for index in range(headers.count()):
                header = headers.nth(index)
                box = header.bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH and box["y"] + box["height"] <= HEIGHT, (path, box)
                # Not hidden by the list's own sideways scrolling either: the intersection observer
                # counts what the list's scrolling box clips.
                expect(header).to_be_in_viewport(ratio=1)
        # The order list's Created column, the one that fell off (orders/templates/.../change_list.html).
        page.goto(f"{live_server.url}/admin/orders/order/")
        expect(page.locator("#result_list th.column-created_at")).to_be_in_viewport(ratio=1)
