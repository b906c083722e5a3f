"""One-off browser check of /docs: Swagger UI loads with no network beyond
the server, "Authorize" takes a bearer token, and "Try it out" on
GET /v1/auth/me answers 200 with the caller's profile."""
import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

base = sys.argv[1]
email = "browser-check@example.com"
password = "Correct-Horse-Battery-9"


def post(path, body):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": error.read().decode()}


print("register:", post("/v1/auth/register", {"email": email, "password": password}))
login = post("/v1/auth/login", {"email": email, "password": password})
token = login["access_token"]
request = urllib.request.Request(
    base + "/v1/user/profile/reset-api-key",
    data=b"",
    headers={"Authorization": "Bearer " + token},
    method="POST",
)
with urllib.request.urlopen(request) as answer:
    api_key = json.loads(answer.read())["api_key"]

outside = []
with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )
    page = browser.new_page()

    def note(request):
        if not request.url.startswith(base):
            outside.append(request.url)

    page.on("request", note)
    page.goto(base + "/docs/", wait_until="networkidle")
    page.wait_for_selector(".swagger-ui .info .title")
    print("title:", page.inner_text(".swagger-ui .info .title").splitlines()[0])
    operations = page.locator(".opblock").count()
    print("operations rendered:", operations)

    results = {}
    for name, credential in [("access token", token), ("ck_ key", api_key)]:
        page.goto(base + "/docs/", wait_until="networkidle")
        page.wait_for_selector(".swagger-ui .info .title")
        page.click("button.authorize")
        page.fill(".modal-ux input[type=text]", credential)
        page.click(".modal-ux button.authorize")
        page.click(".modal-ux button.close-modal")
        block = page.locator("#operations-auth-me")
        block.locator(".opblock-summary").click()
        block.locator("button.try-out__btn").click()
        block.locator("button.execute").click()
        row = block.locator(".live-responses-table tbody .response-col_status").first
        row.wait_for()
        status = row.inner_text().strip()
        body = block.locator(".live-responses-table .microlight").first.inner_text()
        print(f"try it out GET /v1/auth/me with the {name}: {status}, email in body: {email in body}")
        results[name] = status == "200" and email in body
    browser.close()

print("requests outside the server:", outside)
ok = all(results.values()) and not outside and operations > 50
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
