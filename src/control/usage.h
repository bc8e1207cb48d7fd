// Usage lines and help texts of iobandctl, shared by the tool and by the
// engine's error replies.
#pragma once

#include <string>
#include <string_view>

namespace ioband::control {

// "iobandctl create NAME < TABLE_LINE" etc. for a command; for "message",
// `verb` picks the message verb's line ("" = the general one).
std::string usage_of(std::string_view command, std::string_view verb = {});
// The whole help of iobandctl, or of one command ("" if unknown).
std::string help_text();
std::string help_of(std::string_view command);

}  // namespace ioband::control
