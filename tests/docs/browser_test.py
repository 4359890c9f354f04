#!/usr/bin/env python3
"""The API reference (`GET /docs`) and the landing page (`GET /`) in a real
browser: Debian's chromium, driven by Playwright's sync API.

    DOCS_URL=http://127.0.0.1:8080 DOCS_TOKEN=... python3 tests/docs/browser_test.py

DOCS_URL is the server's base URL, DOCS_TOKEN one of its bearer tokens.
CHROMIUM overrides the browser (default /usr/bin/chromium); DOCS_SCREENSHOTS
names a folder for a screenshot of each page (and of the page at a failure).
Exits 0 when every check passed, 1 with a message naming the first one that
did not.
"""

import json
import os
import re
import sys
import tempfile
import traceback
from urllib.parse import urlsplit

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

TIMEOUT_MS = 15_000

# Markup in every string a spec can carry; each would set window.__pwned if
# the page ever parsed spec text as HTML.
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def deep_schema(levels):
    schema = {"type": "string"}
    for i in range(levels):
        schema = {"type": "object", "properties": {f"level{levels - i}": schema}}
    return schema


HOSTILE_SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "hostile " + XSS, "version": XSS, "description": XSS},
    "paths": {
        "/x/{id}": {
            "post": {
                "tags": ["tag" + XSS],
                "summary": "summary " + XSS,
                "description": "```\n" + XSS + "\n```\n\n`" + XSS + "`",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "description": XSS, "schema": {"type": "string", "pattern": XSS}},
                    {"name": "q" + XSS, "in": "query", "schema": {"enum": [XSS, 1]}},
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}},
                "responses": {
                    "200": {"description": XSS, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deep"}}}},
                    "default": {"description": "other", "content": {"text/plain": {"schema": {"$ref": "#/components/schemas/Missing"}}}},
                },
            }
        }
    },
    "components": {
        "schemas": {
            "Node": {
                "type": "object",
                "description": XSS,
                "required": ["next"],
                "properties": {
                    "next": {"$ref": "#/components/schemas/Node"},
                    "kids": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                    XSS: {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Node"}]},
                },
            },
            "Deep": deep_schema(40),
        }
    },
}


class Check(Exception):
    pass


def check(ok, message):
    if not ok:
        raise Check(message)


def main():
    base = os.environ.get("DOCS_URL", "").rstrip("/")
    token = os.environ.get("DOCS_TOKEN", "")
    if not base or not token:
        print("browser_test: set DOCS_URL (the server's base URL) and DOCS_TOKEN", file=sys.stderr)
        return 2
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    shots = os.environ.get("DOCS_SCREENSHOTS") or tempfile.mkdtemp(prefix="docs-shots-")
    os.makedirs(shots, exist_ok=True)
    own = urlsplit(base)

    requests, foreign, console_errors = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)

        def on_request(req):
            requests.append(req)
            u = urlsplit(req.url)
            if u.scheme in ("data", "blob", "about"):
                return
            if (u.scheme, u.netloc) != (own.scheme, own.netloc):
                foreign.append(req.url)

        # Chromium logs each answer of 4xx/5xx as a console error; the ones
        # this test provokes on purpose are expected, no other error is.
        expected = {(422, "/deploy-function")}

        def on_console(msg):
            if msg.type == "error":
                console_errors.append((msg.text, msg.location.get("url", "")))

        def unexpected_errors():
            out = []
            for text, where in console_errors:
                m = re.match(r"Failed to load resource: the server responded with a status of (\d+)", text)
                if not (m and (int(m.group(1)), urlsplit(where).path) in expected):
                    out.append(f"{text} [{where}]")
            return out

        context.on("request", on_request)
        page = context.new_page()
        page.on("console", on_console)
        page.on("pageerror", lambda e: console_errors.append((f"uncaught: {e}", page.url)))
        step = "start"
        try:
            step = "open /docs"
            answer = page.goto(base + "/docs")
            check(answer is not None and answer.status == 200, f"GET /docs answered {answer and answer.status}")
            check(answer.headers.get("content-type", "").startswith("text/html"), f"GET /docs is {answer.headers.get('content-type')}")
            expect(page).to_have_title("modal-agents API reference")
            # /openapi.json may be behind the token: then the page asks for it.
            first = page.locator(".op-item, .notice:not(.loading)").first
            expect(first).to_be_visible()
            spec_needs_token = page.locator(".op-item").count() == 0
            if spec_needs_token:
                expected.add((401, "/openapi.json"))
                step = "enter the token to load the spec"
                expect(page.locator("main")).to_contain_text("enter the token")
                page.fill("#token", token)
                page.click("#token-save")
            print(f"ok: /docs loaded (spec {'behind the token' if spec_needs_token else 'public'})")

            step = "operation list"
            for key in ("POST /deploy-function", "GET /status/{task_id}", "GET /healthz", "GET /tasks"):
                expect(page.locator(f'.op-item[data-op="{key}"]')).to_be_visible()
            total = page.locator(".op-item").count()
            check(total >= 40, f"only {total} operations listed")
            print(f"ok: {total} operations listed, grouped under {page.locator('#op-list h3').count()} headings")

            step = "search box"
            page.fill("#search", "deploy")
            expect(page.locator('.op-item[data-op="POST /deploy-function"]')).to_be_visible()
            expect(page.locator('.op-item[data-op="GET /healthz"]')).to_have_count(0)
            filtered = page.locator(".op-item").count()
            check(0 < filtered < total, f"search 'deploy' left {filtered} of {total}")
            page.fill("#search", "no-such-operation-xyz")
            expect(page.locator("#op-list")).to_contain_text("No operation matches")
            page.fill("#search", "")
            expect(page.locator(".op-item")).to_have_count(total)
            print(f"ok: search 'deploy' shows {filtered} of {total}")

            step = "GET /healthz: Send"
            page.click('.op-item[data-op="GET /healthz"]')
            expect(page.locator("main h2")).to_contain_text("/healthz")
            page.click("#send")
            expect(page.locator("#resp-status")).to_have_text(re.compile(r"^200\b"))
            expect(page.locator("#resp-body")).to_contain_text('"status": "ok"')
            print("ok: GET /healthz sent from the page: 200")

            step = "enter the token"
            if not spec_needs_token:
                page.fill("#token", token)
                page.click("#token-save")
            expect(page.locator("#token-state")).to_have_text("token set")
            check(page.locator("#token").input_value() == "", "the token stays in the input field")
            stored = page.evaluate("() => Object.values(sessionStorage)")
            check(token in stored, "the token is not in sessionStorage")
            local = page.evaluate("() => JSON.stringify(localStorage)")
            check(token not in local, "the token is in localStorage")

            step = "POST /deploy-function: the schema"
            page.click('.op-item[data-op="POST /deploy-function"]')
            expect(page.locator("main h2")).to_contain_text("/deploy-function")
            main_text = page.locator("#content").text_content()
            for needle in ("function_code", "function_name", "required", "DeployRequest", "^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                           "Deployed", "Problem", "422"):
                check(needle in main_text, f"the deploy operation does not show {needle!r}")
            # Spec text is shown as text: `<slug>` in Problem's description is no element.
            check("urn:modal-agents:problem:<slug>" in main_text, "Problem.type's description is not shown as text")
            check(page.locator("main slug").count() == 0, "spec text became markup")
            skeleton = json.loads(page.locator("#body").input_value())
            check(set(skeleton) == {"function_code", "function_name"}, f"body skeleton {skeleton}")
            print("ok: deploy shows its parameters, body and response schemas; body prefilled", skeleton)

            step = "POST /deploy-function without function_code: 422"
            page.fill("#body", json.dumps({"function_name": "f"}))
            page.click("#send")
            expect(page.locator("#resp-status")).to_have_text(re.compile(r"^422\b"))
            expect(page.locator(".problem")).to_be_visible()
            expect(page.locator(".problem .problem-field")).to_have_text("function_code")
            expect(page.locator("#resp-body")).to_contain_text('"field": "function_code"')
            print("ok: 422 problem+json shown, field function_code")

            step = "POST /deploy-function: 200/201"
            page.fill("#body", json.dumps({"function_code": "def f(x):\n    return x", "function_name": "f"}))
            page.click("#send")
            status = page.locator("#resp-status")
            expect(status).to_have_class("status-line ok")
            code = status.text_content().split()[0]
            check(code in ("200", "201"), f"deploy answered {status.text_content()}")
            expect(page.locator("#resp-body")).to_contain_text('"function_name": "f"')
            check(page.locator(".problem").count() == 0, "a problem box is shown for a success")
            print(f"ok: deploy from the page: {code}")
            page.screenshot(path=os.path.join(shots, "docs.png"), full_page=False)

            step = "the token never in a URL nor the page"
            deploys = [r for r in requests if r.method == "POST" and urlsplit(r.url).path == "/deploy-function"]
            check(len(deploys) == 2, f"{len(deploys)} deploy requests, expected 2")
            for r in deploys:
                check(r.headers.get("authorization") == f"Bearer {token}", "a deploy went without the bearer token")
            for r in requests:
                check(token not in r.url, f"the token is in a request URL: {r.url}")
            check(token not in page.url, "the token is in the page URL")
            check(token not in page.content(), "the token is in the page's markup")
            health = [r for r in requests if urlsplit(r.url).path == "/healthz"]
            check(health and "authorization" not in health[0].headers, "the token went to /healthz, which needs none")
            print("ok: the token went only in Authorization headers")

            step = "open /"
            answer = page.goto(base + "/")
            check(answer is not None and answer.status == 200, f"GET / answered {answer and answer.status}")
            check(answer.headers.get("content-type", "").startswith("text/html"), f"GET / is {answer.headers.get('content-type')}")
            expect(page).to_have_title("modal-agents")
            body = page.locator("body").inner_text()
            check("{{VERSION}}" not in body, "the landing page still shows {{VERSION}}")
            check(page.locator("#version").inner_text().strip() != "", "the landing page shows no version")
            for href in ("/docs", "/openapi.json", "/mcp", "/healthz"):
                expect(page.locator(f'a[href="{href}"]')).to_have_count(1)
            expect(page.locator("#mcp-config")).to_contain_text(base + "/mcp")
            check("modal-agents --help" in body, "the landing page does not name `modal-agents --help`")
            page.screenshot(path=os.path.join(shots, "landing.png"))
            page.click('a[href="/docs"]')
            expect(page).to_have_url(base + "/docs")
            expect(page.locator('.op-item[data-op="GET /healthz"]')).to_be_visible()
            print("ok: / links to /docs, /openapi.json, /mcp, /healthz; /docs opens from it")

            step = "the served pages load nothing from elsewhere"
            for path in ("/docs", "/"):
                html = context.request.get(base + path).text()
                for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "url(", "@import"):
                    check(bad not in html, f"{path} contains {bad!r}")
                check(not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", html), f"{path} refers to another host")
            print("ok: /docs and / are self-contained (no external src/href, no HTML sinks)")

            step = "a hostile spec is shown as text"
            hostile = context.new_page()
            hostile.on("pageerror", lambda e: console_errors.append((f"uncaught (hostile spec): {e}", hostile.url)))
            hostile.route(base + "/openapi.json", lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(HOSTILE_SPEC)))
            hostile.goto(base + "/docs#" + "POST%20%2Fx%2F%7Bid%7D")
            expect(hostile.locator("main h2")).to_contain_text("/x/{id}")
            hostile.locator("details").evaluate_all("ds => ds.forEach(d => { d.open = true; })")
            text = hostile.locator("body").text_content()
            for needle in (XSS, "recursive", "nested too deep", "unresolved reference"):
                check(needle in text, f"the hostile spec's page does not show {needle!r}")
            check(hostile.locator("body img, body svg, main script, nav script").count() == 0, "spec text became elements")
            check(hostile.evaluate("() => window.__pwned") is None, "spec text ran as script")
            body_value = json.loads(hostile.locator("#body").input_value())
            check(body_value == {"next": None}, f"cyclic skeleton {body_value}")
            hostile.close()
            print("ok: a spec full of markup, a cycle, a 40-level schema and a dangling $ref render as text")

            step = "requests stayed on the server"
            check(not foreign, f"requests to another host: {foreign}")
            check(not unexpected_errors(), f"console errors: {unexpected_errors()}")
            print(f"ok: {len(requests)} requests, all to {own.netloc}; no console errors")
        except (Check, PlaywrightError, AssertionError) as e:
            shot = os.path.join(shots, "failure.png")
            try:
                page.screenshot(path=shot, full_page=True)
            except PlaywrightError:
                shot = "(no screenshot)"
            print(f"FAIL at step '{step}': {e}", file=sys.stderr)
            if not isinstance(e, Check):
                traceback.print_exc(limit=3)
            if unexpected_errors():
                print(f"console errors: {unexpected_errors()}", file=sys.stderr)
            print(f"page: {page.url}; screenshot: {shot}", file=sys.stderr)
            return 1
        finally:
            context.close()
            browser.close()
    print(f"browser test: all checks passed (screenshots in {shots})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
