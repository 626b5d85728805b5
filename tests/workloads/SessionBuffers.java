// A Java service that keeps a buffer per session it opens and never closes a session, while each request's scratch
// array is dropped. Mode `heap` keeps byte arrays (the Java heap grows up to -Xmx); mode `direct` keeps direct
// ByteBuffers (native memory outside the Java heap). Arguments: mode, sessions per second, seconds of activity,
// seconds to hold, KiB per session (256). Run as a single source file: java SessionBuffers.java direct 40 7 120.
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

public class SessionBuffers {
    static int sessionBytes = 256 * 1024;
    static final List<Object> sessions = new ArrayList<>();
    static long checksum;

    static void rememberSession(boolean direct, int id) {
        if (direct) {
            ByteBuffer b = ByteBuffer.allocateDirect(sessionBytes);
            b.put(0, (byte) id);
            sessions.add(b);
        } else {
            byte[] b = new byte[sessionBytes];
            b[id % sessionBytes] = (byte) id;
            sessions.add(b);
        }
    }

    static void handleRequest(boolean direct, int id) {
        byte[] scratch = new byte[16 * 1024];
        scratch[id % scratch.length] = 1;
        checksum += scratch[0];
        rememberSession(direct, id);
    }

    public static void main(String[] args) throws InterruptedException {
        boolean direct = args.length > 0 && args[0].equals("direct");
        int rate = args.length > 1 ? Integer.parseInt(args[1]) : 40;
        int secs = args.length > 2 ? Integer.parseInt(args[2]) : 7;
        int hold = args.length > 3 ? Integer.parseInt(args[3]) : 120;
        sessionBytes = (args.length > 4 ? Integer.parseInt(args[4]) : 256) * 1024;
        long start = System.nanoTime();
        int served = 0;
        while (System.nanoTime() - start < secs * 1_000_000_000L) {
            long due = (System.nanoTime() - start) * rate / 1_000_000_000L;
            while (served < due) {
                handleRequest(direct, served++);
            }
            Thread.sleep(10);
        }
        System.out.println(sessions.size() + " sessions, checksum " + checksum);
        Thread.sleep(hold * 1000L);
    }
}
