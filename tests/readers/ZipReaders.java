// Java's two ZIP readers, for the reader matrix (tests/readers/__init__.py).
// Usage: java -cp DIR ZipReaders zipfile|zipinputstream ARCHIVE  (zipinputstream "-" reads stdin)
// Prints one JSON array: [{"name", "size", "crc32", "sha256", "declared_size", "declared_crc32"}]
// where size/crc32/sha256 are computed over the bytes the reader returned and declared_* are what
// it reports for the entry (-1 when it does not know). Any exception: message on stderr, exit 1.
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.Enumeration;
import java.util.HexFormat;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;
import java.util.zip.ZipInputStream;

public final class ZipReaders {
    private static final HexFormat HEX = HexFormat.of();

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: ZipReaders zipfile|zipinputstream ARCHIVE");
            System.exit(2);
        }
        PrintStream out = new PrintStream(
            new BufferedOutputStream(new java.io.FileOutputStream(java.io.FileDescriptor.out), 1 << 16),
            false, StandardCharsets.UTF_8);
        out.print('[');
        boolean first = true;
        byte[] buffer = new byte[1 << 16];
        if (args[0].equals("zipfile")) {
            try (ZipFile zip = new ZipFile(args[1], StandardCharsets.UTF_8)) {
                Enumeration<? extends ZipEntry> entries = zip.entries();
                while (entries.hasMoreElements()) {
                    ZipEntry entry = entries.nextElement();
                    try (InputStream in = zip.getInputStream(entry)) {
                        first = emit(out, first, entry, in, buffer);
                    }
                }
            }
        } else if (args[0].equals("zipinputstream")) {
            InputStream raw = args[1].equals("-") ? System.in : new FileInputStream(args[1]);
            try (ZipInputStream zip = new ZipInputStream(new BufferedInputStream(raw, 1 << 16),
                                                         StandardCharsets.UTF_8)) {
                ZipEntry entry;
                while ((entry = zip.getNextEntry()) != null) {
                    first = emit(out, first, entry, zip, buffer);
                }
            }
        } else {
            System.err.println("unknown mode " + args[0]);
            System.exit(2);
        }
        out.println(']');
        out.flush();
    }

    // Reads the entry to its end; ZipEntry's size and CRC are read after that, since a streaming
    // reader learns them from the data descriptor.
    private static boolean emit(PrintStream out, boolean first, ZipEntry entry, InputStream in,
                                byte[] buffer) throws IOException {
        MessageDigest sha;
        try {
            sha = MessageDigest.getInstance("SHA-256");
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        CRC32 crc = new CRC32();
        long size = 0;
        int n;
        while ((n = in.read(buffer)) > 0) {
            sha.update(buffer, 0, n);
            crc.update(buffer, 0, n);
            size += n;
        }
        if (!first) {
            out.print(',');
        }
        out.print("{\"name\":\"");
        out.print(escape(entry.getName()));
        out.print("\",\"size\":" + size + ",\"crc32\":" + crc.getValue());
        out.print(",\"sha256\":\"" + HEX.formatHex(sha.digest()) + "\"");
        out.print(",\"declared_size\":" + entry.getSize() + ",\"declared_crc32\":" + entry.getCrc());
        out.print('}');
        return false;
    }

    private static String escape(String s) {
        StringBuilder b = new StringBuilder(s.length() + 8);
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.toString();
    }
}
