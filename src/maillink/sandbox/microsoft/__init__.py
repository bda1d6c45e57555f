"""The Microsoft stand-in: the identity platform (v2.0 endpoints) and Graph mail, over TLS.

`sandbox` assembles the two servers; `identity` and `graph` hold their routes, `grants` the
tokens, `mailbox` and `odata` the mail and its Graph shape, `batch` $batch, `tls` the throwaway CA.
"""

from maillink.sandbox.microsoft.sandbox import MicrosoftSandbox

__all__ = ["MicrosoftSandbox"]
