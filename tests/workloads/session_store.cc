// A heap leak in C++: SessionStore keeps every session it is given (no expiry). Each session's payload is a
// std::vector that operator new (libstdc++) allocates and the vector's constructor fills, inside
// SessionStore::remember. Ordinary code built with g++ -O2 -g and no frame pointers.
// session_store [MiB per second = 8] [seconds = 8] [hold seconds = 60]
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace {

constexpr size_t kPayload = 256 * 1024;

struct Session {
    uint64_t id;
    std::string user;
    std::vector<uint8_t> payload;
};

}  // namespace

class SessionStore {
  public:
    void remember(uint64_t id, const std::string &user, size_t bytes);
    size_t size() const { return sessions_.size(); }

  private:
    std::vector<std::unique_ptr<Session>> sessions_;
};

// Out of line, as a class's methods are when the class lives in its own translation unit.
__attribute__((noinline)) void SessionStore::remember(uint64_t id, const std::string &user, size_t bytes) {
    auto session = std::make_unique<Session>();
    session->id = id;
    session->user = user;
    session->payload.assign(bytes, static_cast<uint8_t>(id % 251 + 1));
    sessions_.push_back(std::move(session));
}

static SessionStore store;

// One request: the user's session is remembered.
__attribute__((noinline)) int handle_request(size_t id) {
    std::string user = "user-" + std::to_string(id % 1000);
    store.remember(id, user, kPayload);
    return 1;
}


int main(int argc, char **argv) {
    double mib_per_sec = arg_or(argc, argv, 1, 8), secs = arg_or(argc, argv, 2, 8), hold_secs = arg_or(argc, argv, 3, 60);
    serve_requests(mib_per_sec * (1 << 20) / kPayload, secs, handle_request);
    std::fprintf(stderr, "session_store: %zu sessions\n", store.size());
    hold(hold_secs);
    return 0;
}
