"""The one entry point every adapter calls: evaluate a document against a policy.

CONTRACT (adapters code against this; the implementation is being written):

    evaluate(document, *, policy, resolver) -> Evaluation

- `document` is a plain JSON-like mapping (one YAML/JSON document, or an AdmissionReview's object).
- `Evaluation.applicable` is False for anything that is not a networking.istio.io EnvoyFilter with ext_proc
  content (or that the policy excludes); then `findings` and `patch` are empty and `fixed == document`.
- `Evaluation.findings` are the findings of the *given* document (what `check` prints), in rule-id order,
  `off` rules omitted.
- `Evaluation.patch` is a minimal RFC 6902 patch (only paths a rule owns) that turns the document into its
  corrected form; `Evaluation.fixed` is that corrected document; `Evaluation.remaining` are the findings of
  `fixed` (what is still wrong after the fix: the webhook denies those at `enforce`).
"""
