"""Developer tools: a Chromium driver for the app (``browser``) and the README's screenshots."""
