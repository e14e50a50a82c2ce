// Log in with an API key. The key stays in this tab's session storage and goes to the API
// only in the Authorization header.

import { h } from "../dom.js";

export function loginPage(context, message) {
  const input = h("input#api-key", {
    type: "password", name: "key", autocomplete: "off", spellcheck: "false", required: true,
    "aria-describedby": "api-key-help", placeholder: "frk_…",
  });
  const error = h("p.error#login-error", { role: "alert", hidden: !message });
  if (message) error.textContent = message;
  const button = h("button.button.primary", { type: "submit" }, "Log in");
  const form = h("form.card.login", {
    onsubmit: async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      button.disabled = true;
      error.hidden = true;
      try {
        await context.login(key);
      } catch (failure) {
        error.textContent = failure.status === 401
          ? "This key was refused. Check that it is complete and has not been revoked."
          : `Could not log in: ${failure.message}`;
        error.hidden = false;
        input.focus();
      } finally {
        button.disabled = false;
      }
    },
  },
  h("label", { for: "api-key" }, "API key"),
  input,
  h("p.help#api-key-help", {},
    "Keys look like frk_… and come from whoever runs this flowrelay (admins create them with POST /keys; ",
    h("code", {}, "flowrelay up"), " writes an admin key to .flowrelay/secrets/admin.key). ",
    "The key is kept in this tab only and removed when it closes. A link of the form ",
    h("code", {}, "/ui/?key=…"), " logs in too."),
  error,
  h("div.actions", {}, button));
  return {
    title: "Log in",
    element: h("section.page.narrow", {}, h("h1", {}, "Log in to the flowrelay console"), form),
  };
}
