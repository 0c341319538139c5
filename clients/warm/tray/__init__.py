"""warm-tray: the system-tray client. `state` is the menu and icon as plain data (tested without a display);
`app` runs them with pystray (imported there only); `icons` draws the pictures."""
